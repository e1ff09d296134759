"""Slim vs dense inference latency of a trained, structurally sparse LilNetX model.

Trains a model with :func:`lilnetx.run` and a large slice-sparsity weight (or loads a ``.lnx``
file), writes it as ``.lnx`` (under /tmp by default), reloads it, slims it with
:func:`lilnetx.slim` (and with ``round_to=8``, the channel counts rounded up to multiples of 8)
and times the dense and the slim networks side by side in one process, in torch eager (as is and
with BatchNorm folded) and, exported with :func:`lilnetx.deploy.export.export_onnx`, in ONNX
Runtime (:func:`lilnetx.deploy.latency.onnx_session`): every round runs a block of forward passes
of each network (torch under ``torch.inference_mode()`` with a fixed torch thread count, ONNX
Runtime with as many intra-op threads; the torch rounds first, then the ONNX Runtime ones), the
order alternating between rounds, each pass timed on its own; the report gives medians and
their ratios (dense / slim per runtime) at batch 1 and batch 64 against the MAC ratio, with
accuracy, slice and channel sparsity, FLOPs (:func:`lilnetx.count_macs`) and a per-layer table
of zero input/output channels (:func:`lilnetx.stats.layer_stats`) against the channels that slim
removed.

    python benchmarks/slim_speedup.py                          # train, measure, print
    python benchmarks/slim_speedup.py --quick                  # smoke run (tiny training)
    python benchmarks/slim_speedup.py --load /tmp/model.lnx    # measure an existing file
    python benchmarks/slim_speedup.py --out docs/benchmarks.md # (re)write the `slim` section
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import command_line, loadavg, machine, machine_line, write_section  # noqa: E402

from lilnetx import (  # noqa: E402
    RunSpec,
    TrainConfig,
    count_macs,
    create_dataset,
    evaluate_accuracy,
    fileformat,
    iterate_batches,
    slim,
)
from lilnetx import run as run_training  # noqa: E402
from lilnetx.deploy.export import (  # noqa: E402
    example_input,
    export_onnx,
    out_channels,
    slim_metrics,
)
from lilnetx.deploy.latency import onnx_session, torch_threads  # noqa: E402
from lilnetx.deploy.slimming import zero_dead_reads  # noqa: E402
from lilnetx.stats import layer_stats  # noqa: E402

SECTION = "slim"
TARGET_SPEEDUP_B64 = 2.0  # issue 17: at batch 64, 2 threads, in torch and in ONNX Runtime
TARGET_MAC_GAP = 1.3  # issue 17: the speedup within 1.3x of the MAC ratio
BATCHES = (1, 64)
UNREAD_ONLY = "unread-only"
FOLDED = "BN-folded"
TORCH, TORCH_FOLDED, ORT = "torch", f"torch {FOLDED}", "onnxruntime"
NOISY = 1.5


def rounded_name(round_to: int) -> str:
    return f"slim round_to={round_to}"


def key(runtime: str, net: str) -> str:
    """The name of one network in one runtime in the latency results."""
    return f"{runtime}: {net}"

FULL = {"epochs": 8, "limit": 12000, "batch_size": 128, "lr": 2e-2, "lambda_sparsity": 3e-3,
        "rounds": 30, "block": 3, "warmup": 5}
QUICK = {"epochs": 1, "limit": 1000, "batch_size": 128, "lr": 2e-2, "lambda_sparsity": 3e-3,
         "rounds": 3, "block": 3, "warmup": 2}


# ----------------------------------------------------------------------------- the model

def train(args, settings: dict) -> tuple[nn.Module, dict, list[dict], dict]:
    """Train with lilnetx.run, save the .lnx file; the plain network reloaded from the file."""
    cfg = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"],
                      lr=settings["lr"], lambda_sparsity=settings["lambda_sparsity"],
                      seed=args.seed, device="cpu")
    spec = RunSpec(model=args.model, dataset=args.dataset, width=args.width,
                   data_root=args.data_root, limit=settings["limit"], train=cfg)

    def progress(e: dict) -> None:
        if e["event"] == "epoch":
            print(f"  epoch {e['epoch']}: train acc {e['train_accuracy']:.3f}, val acc "
                  f"{e['val_accuracy']:.3f}, {e.get('elapsed_seconds', e.get('seconds', 0)):.0f} s",
                  file=sys.stderr, flush=True)

    with torch_threads(args.train_threads):
        outcome = run_training(spec, progress)
    size = fileformat.save(outcome.model, args.model_path)
    plain = fileformat.load(args.model_path)
    ref = outcome.plain.state_dict()
    same = all(torch.equal(ref[k], v) for k, v in plain.state_dict().items()
               if not k.endswith("num_batches_tracked"))
    if not same:
        raise SystemExit("the reloaded .lnx network differs from the trained one")
    stats = [s.as_dict() for s in layer_stats(outcome.model)]
    info = {"source": "trained", "accuracy": outcome.summary["accuracy"],
            "val_accuracy": outcome.summary["val_accuracy"],
            "slice_sparsity": outcome.summary["slice_sparsity"],
            "weight_sparsity": outcome.summary["weight_sparsity"],
            "zero_out_channel_fraction": outcome.summary["channel_sparsity"],
            "train_seconds": outcome.summary["train_seconds"], "file_bytes": size,
            "train_size": len(outcome.splits.train), "test_size": len(outcome.splits.test),
            "arch": outcome.model.arch}
    return plain, info, stats, outcome.model.arch


def weight_layer_stats(net: nn.Module) -> list[dict]:
    """The fields of :class:`lilnetx.stats.LayerStats` used here, from a plain network's weights
    (same definitions: a slice is zero when its whole k x k kernel is zero)."""
    out = []
    for name, m in net.named_modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        w = m.weight.detach()
        o, i = w.shape[0], w.shape[1]
        zero = (w.reshape(o, i, -1) == 0).all(dim=2)
        out.append({"name": name, "group": "dense" if isinstance(m, nn.Linear) else
                    f"conv{w.shape[2]}x{w.shape[3]}", "shape": list(w.shape),
                    "slices": o * i, "slice_sparsity": float(zero.float().mean()),
                    "out_channels": o, "out_channels_zero": int(zero.all(dim=1).sum()),
                    "in_channels": i, "in_channels_zero": int(zero.all(dim=0).sum()),
                    "weight_sparsity": float((w == 0).float().mean()), "params": w.numel()})
    return out


def load(args) -> tuple[nn.Module, dict, list[dict], dict]:
    """An existing .lnx file; accuracy re-measured on the test split of its data set."""
    c = fileformat.read(args.load)
    plain = fileformat.build_network(c)
    data = c.arch.get("data", {}).get("name", args.dataset)
    splits = create_dataset(data, args.data_root)
    stats = weight_layer_stats(plain)
    convs = [s for s in stats if s["group"] != "dense"] or stats
    params = sum(s["params"] for s in stats)
    info = {"source": f"loaded {args.load}", "accuracy": evaluate_accuracy(plain, splits.test,
                                                                           device="cpu"),
            "val_accuracy": None,
            "slice_sparsity": sum(s["slice_sparsity"] * s["slices"] for s in convs)
            / max(sum(s["slices"] for s in convs), 1),
            "weight_sparsity": sum(s["weight_sparsity"] * s["params"] for s in stats) / params,
            "zero_out_channel_fraction": sum(s["out_channels_zero"] for s in stats)
            / max(sum(s["out_channels"] for s in stats), 1),
            "train_seconds": None, "file_bytes": c.size_bytes, "train_size": None,
            "test_size": len(splits.test), "arch": c.arch}
    return plain, info, stats, c.arch


# ----------------------------------------------------------------------------- analysis

def input_activity(net: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    """Per conv/linear layer: which input channels are identically zero / constant on ``x``."""
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_pre_hook(
                lambda _m, inp, _n=name: acts.__setitem__(_n, inp[0].detach())))
    try:
        with torch.inference_mode():
            net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, a in acts.items():
        per = a.transpose(0, 1).reshape(a.shape[1], -1)
        zero = per.eq(0).all(dim=1)
        const = (per.amax(dim=1) == per.amin(dim=1)) & ~zero
        out[name] = {"zero": zero, "const": const}
    return out


def slice_density(plain: nn.Module, slim_net: nn.Module) -> dict:
    """k x k conv slices (k > 1): in the dense network, non-zero, and in the slim network (how
    many of the slim network's slices are still zero)."""
    slim_mods = dict(slim_net.named_modules())
    dense = nonzero = kept = 0
    for name, m in plain.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
            w = m.weight.detach()
            dense += w.shape[0] * w.shape[1]
            nonzero += int(w.flatten(2).ne(0).any(dim=2).sum())
            sw = slim_mods[name].weight
            kept += sw.shape[0] * sw.shape[1]
    return {"kxk_slices_dense": dense, "kxk_slices_nonzero": nonzero, "kxk_slices_slim": kept}


def channel_table(plain: nn.Module, slim_net: nn.Module, stats: list[dict],
                  activity: dict[str, dict]) -> list[dict]:
    """Per layer: zero in/out channels (weights), channels kept by slim, and input channels that
    carry an all-zero / constant activation although the layer's weights still read them."""
    slim_mods = dict(slim_net.named_modules())
    rows = []
    for s in stats:
        name = s["name"]
        dense = plain.get_submodule(name)
        w = dense.weight.detach()
        reads = (w.reshape(w.shape[0], w.shape[1], -1) != 0).any(dim=2).any(dim=0)
        act = activity.get(name)
        sm = slim_mods.get(name)
        rows.append({
            "name": name, "shape": s["shape"], "slice_sparsity": s["slice_sparsity"],
            "out_channels": s["out_channels"], "out_channels_zero": s["out_channels_zero"],
            "in_channels": s["in_channels"], "in_channels_zero": s["in_channels_zero"],
            "out_kept": (sm.weight.shape[0] if sm is not None else None),
            "in_kept": (sm.weight.shape[1] if sm is not None else None),
            "in_dead_but_read": int((act["zero"] & reads).sum()) if act else None,
            "in_const_but_read": int((act["const"] & reads).sum()) if act else None,
        })
    return rows


# ----------------------------------------------------------------------------- latency

def interleaved_latency(runs: dict[str, object], *, threads: int, rounds: int, block: int,
                        warmup: int) -> dict[str, list[float]]:
    """Per-pass wall times (seconds) of each zero-argument callable of ``runs`` (one forward pass
    of a network in a runtime), measured in alternating blocks under ``threads`` torch threads
    and ``torch.inference_mode()``."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    with torch_threads(threads), torch.inference_mode():
        for run in runs.values():
            for _ in range(warmup):
                run()
        for r in range(rounds):
            for k in (order if r % 2 == 0 else order[::-1]):
                run = runs[k]
                for _ in range(block):
                    t0 = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t0)
    return times


def quartiles(ts: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return q[0] * 1e3, statistics.median(ts) * 1e3, q[2] * 1e3


def runners(torch_nets: dict[str, nn.Module], onnx_paths: dict[str, str], x: torch.Tensor,
            threads: int) -> dict[str, object]:
    """One forward pass of every network on ``x``: the torch networks (keys already
    ``runtime: net``) and ONNX Runtime sessions with ``threads`` intra-op threads."""
    runs: dict[str, object] = {}
    for k, net in torch_nets.items():
        net.eval()
        runs[k] = (lambda n=net: n(x))
    feed = x.numpy()
    for name, path in onnx_paths.items():
        # spinning off: the sessions are timed in turn (benchmarks/ort_spinning.py)
        sess = onnx_session(path, threads=threads, spinning=False)
        inp = sess.get_inputs()[0].name
        runs[key(ORT, name)] = (lambda s=sess, i=inp: s.run(None, {i: feed}))
    return runs


def speedups(ms: dict[str, float], round_to: int | None) -> dict[str, float]:
    """Ratios of medians: per runtime, dense / slim (and dense / slim round_to=N) and, for the
    rounding, slim / slim round_to=N (> 1: rounding is faster)."""
    out = {}
    for rt in (TORCH, TORCH_FOLDED, ORT):
        dense = ms.get(key(rt, "dense"))
        if dense is None:
            continue
        for net in ("slim", UNREAD_ONLY, *([rounded_name(round_to)] if round_to else [])):
            if key(rt, net) in ms:
                out[key(rt, net)] = dense / ms[key(rt, net)]
        if round_to and key(rt, rounded_name(round_to)) in ms:
            out[key(rt, "round_to gain")] = ms[key(rt, "slim")] / ms[key(rt, rounded_name(
                round_to))]
    return out


def measure_latency(torch_nets: dict[str, nn.Module], onnx_paths: dict[str, str],
                    shape: tuple[int, ...], threads: list[int], settings: dict,
                    seed: int) -> list[dict]:
    """Interleaved latency of every network in every runtime per thread count and batch."""
    results = []
    gen = torch.Generator().manual_seed(seed)
    for n in threads:
        for b in BATCHES:
            x = torch.randn(b, *shape, generator=gen)
            runs = runners(torch_nets, onnx_paths, x, n)
            t: dict[str, list[float]] = {}
            # torch's OpenMP threads and ONNX Runtime's pool both spin-wait after a pass: on two
            # cores one runtime's spinning thread can stall the other's next pass (a quick run
            # that mixed them on a loaded machine had 1 s outliers), so each runtime's networks
            # are interleaved among themselves, one runtime after the other
            for part in (lambda k: not k.startswith(ORT), lambda k: k.startswith(ORT)):
                group = {k: v for k, v in runs.items() if part(k)}
                if group:
                    t.update(interleaved_latency(group, threads=n, rounds=settings["rounds"],
                                                 block=settings["block"],
                                                 warmup=settings["warmup"]))
            q = {k: quartiles(v) for k, v in t.items()}
            ms = {k: v[1] for k, v in q.items()}
            res = {"threads": n, "batch": b, "passes_each": len(next(iter(t.values()))),
                   "ms": ms, "iqr_ms": {k: [v[0], v[2]] for k, v in q.items()},
                   "speedup": speedups(ms, settings["round_to"])}
            results.append(res)
            print(f"threads {n} batch {b:3d}:", flush=True)
            for k, v in ms.items():
                sp = res["speedup"].get(k)
                print(f"  {k:38s} {v:9.2f} ms" + (f"  speedup {sp:.2f}x" if sp else ""),
                      flush=True)
    return results


def onnx_check(net: nn.Module, path: str, probe: torch.Tensor) -> float:
    """Max |logit difference| of the ONNX model at ``path`` under ONNX Runtime and ``net``."""
    sess = onnx_session(path, threads=1)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: probe.numpy()})
    with torch.inference_mode():
        want = net.eval()(probe)
    return float((torch.from_numpy(got) - want).abs().max())


def compare(a: nn.Module, b: nn.Module, splits) -> dict:
    """Max |logit difference| of ``a`` and ``b`` over the test split, and ``b``'s accuracy."""
    diff = 0.0
    with torch.inference_mode():
        for x, _ in iterate_batches(splits.test, 1000, shuffle=False):
            diff = max(diff, float((a(x) - b(x)).abs().max()))
    return {"max_abs_diff": diff, "accuracy": evaluate_accuracy(b, splits.test, device="cpu")}


# ----------------------------------------------------------------------------- report

def markdown(res: dict, command: str) -> str:
    st, info, fl = res["settings"], res["model"], res["flops"]
    arch = info["arch"]
    lines = [
        "## Slim vs dense inference latency (`lilnetx.slim`)",
        "",
        machine_line(res["machine"]),
        f"Load average before / after: {st['loadavg_before']} / {st['loadavg_after']} (a shared "
        "machine: absolute times are noisy; dense and slim are interleaved so drifts hit both).",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if info["source"] == "trained":
        lines += [
            f"Model: `{arch['model']}` width {arch['width']:g} on `{arch['data']['name']}` "
            f"({arch['in_channels']}x{arch['image_size']}x{arch['image_size']}), trained with "
            f"`lilnetx.run` on {info['train_size']:,} training images for {st['epochs']} epochs "
            f"(batch {st['batch_size']}, lr {st['lr']:g}, lambda_sparsity "
            f"{st['lambda_sparsity']:g}, other hyperparameters the `TrainConfig` defaults, seed "
            f"{st['seed']}, {st['train_threads']} torch thread(s)) in "
            f"{info['train_seconds']:.0f} s; saved as `{st['model_path']}` "
            f"({info['file_bytes']:,} bytes) and reloaded from the file.",
        ]
    else:
        lines.append(f"Model: {info['source']} (`{arch['model']}`).")
    lines += [
        "",
        "| test accuracy | slice sparsity | weight sparsity | zero output channels | "
        "channels removed by slim | dense MACs | slim MACs | MAC ratio | slice-skipping MACs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {info['accuracy']:.4f} | {info['slice_sparsity']:.4f} | "
        f"{info['weight_sparsity']:.4f} | {info['zero_out_channel_fraction']:.4f} | "
        f"{fl['channel_sparsity']:.4f} | {fl['dense_flops']:,} | {fl['flops']:,} | "
        f"{fl['dense_flops'] / fl['flops']:.2f}x | {fl['sparse_flops']:,} |",
        "",
        "MACs per sample from `lilnetx.count_macs` (torch's FLOP counter / 2); "
        "slice-skipping MACs: what a kernel skipping zero k x k slices would do on the dense "
        "network. Slim network checked against dense on the whole test split: max |logit "
        f"difference| {res['check']['max_abs_diff']:.2e}, slim test accuracy "
        f"{res['check']['accuracy']:.4f}.",
        "",
    ]
    wi = res.get("what_if")
    if wi:
        lines += [
            f"`slim` is `lilnetx.slim` as shipped: it first drops {wi['reads_dropped']} reads of "
            "dead channels (a channel whose every writer has an all-zero weight slice, so that "
            "BatchNorm and ReLU make it a constant, and the constant is exactly 0: "
            "`lilnetx.deploy.slimming.zero_dead_reads`), then removes every channel no layer reads. "
            f"`{UNREAD_ONLY}` is the same without dropping dead reads "
            "(`slim(..., drop_dead=False)`), for reference: "
            f"{wi['channel_sparsity']:.4f} of the output channels removed, {wi['flops']:,} MACs "
            f"({fl['dense_flops'] / wi['flops']:.2f}x fewer than dense), max |logit difference| "
            f"to dense over the test split {wi['max_abs_diff']:.2e}, test accuracy "
            f"{wi['accuracy']:.4f}.",
            "",
        ]
    rd = res.get("rounded")
    rname = rounded_name(rd["round_to"]) if rd else None
    if rd:
        lines += [
            f"`{rname}` is `lilnetx.slim(..., round_to={rd['round_to']})`: every coupled channel "
            f"group that loses channels keeps a multiple of {rd['round_to']} (or its full width) "
            "by keeping some of its unread channels: "
            f"{rd['channel_sparsity']:.4f} of the output channels removed, {rd['flops']:,} MACs "
            f"({fl['dense_flops'] / rd['flops']:.2f}x fewer than dense), max |logit difference| "
            f"to dense over the test split {rd['max_abs_diff']:.2e}, test accuracy "
            f"{rd['accuracy']:.4f}.",
            "",
        ]
    od = res.get("onnx_max_abs_diff") or {}
    fd = res.get("folded_max_abs_diff") or {}
    nets = ["dense", "slim", *([rname] if rd else [])]
    runtimes = [TORCH, TORCH_FOLDED, *([ORT] if od else [])]
    lines += [
        "Latency: median of per-pass wall times, "
        f"{st['rounds']} interleaved rounds x {st['block']} passes of each network (after "
        f"{st['warmup']} warm-up passes; the order alternates between rounds), the torch "
        "networks interleaved with each other, then the ONNX Runtime ones (both runtimes' "
        "threads spin-wait after a pass and can stall each other's next one on two cores), "
        "random input; interquartile range in brackets. Runtimes: `torch` is eager PyTorch under "
        f"`torch.inference_mode()` with the given torch thread count; `{TORCH_FOLDED}` the same "
        "networks with every BatchNorm folded into the conv before it "
        "(`torch.fx.experimental.optimization.fuse`; max |logit difference| "
        + ", ".join(f"{k} {v:.1e}" for k, v in fd.items()) + ")"
        + ("; `onnxruntime` the network exported with `lilnetx.deploy.export.export_onnx` "
           "(opset 17) and run by ONNX Runtime's CPU provider "
           "(`lilnetx.deploy.latency.onnx_session`: intra-op threads = the thread count, one "
           "inter-op thread, all graph optimizations, intra-op spinning off, so it folds "
           "BatchNorm and fuses ReLUs itself; max |logit difference| to torch on 512 test images "
           + ", ".join(f"{k} {v:.1e}" for k, v in od.items()) + ")" if od else "")
        + ". Speedup = dense median / slim median in the same runtime"
        + (f"; `{rname} vs slim` = slim median / {rname} median (> 1: rounding is faster)"
           if rd else "") + ".",
        "",
        "| threads | batch | runtime | " + " | ".join(f"{k} ms" for k in nets)
        + " | speedup slim" + (f" | speedup {rname} | {rname} vs slim" if rd else "") + " |",
        "|---:|---:|---|" + "---:|" * (len(nets) + 1 + (2 if rd else 0)),
    ]
    noisy = []
    for r in res["latency"]:
        keys = [key(rt, k) for rt in runtimes for k in nets]
        flag = ""
        if any(r["iqr_ms"][k][1] > NOISY * r["iqr_ms"][k][0] for k in keys if k in r["iqr_ms"]):
            flag = " (noisy)"
            noisy.append(f"{r['threads']} thread(s), batch {r['batch']}")
        for rt in runtimes:
            cells = [f"{r['ms'][key(rt, k)]:.2f} ({r['iqr_ms'][key(rt, k)][0]:.2f}-"
                     f"{r['iqr_ms'][key(rt, k)][1]:.2f})" for k in nets]
            cells.append(f"{r['speedup'][key(rt, 'slim')]:.2f}x")
            if rd:
                cells += [f"{r['speedup'][key(rt, rname)]:.2f}x",
                          f"{r['speedup'][key(rt, 'round_to gain')]:.2f}x"]
            lines.append(f"| {r['threads']}{flag} | {r['batch']} | {rt} | "
                         + " | ".join(cells) + " |")
    if whatif_rows := [r for r in res["latency"] if key(TORCH, UNREAD_ONLY) in r["ms"]]:
        lines += ["", f"`{UNREAD_ONLY}` in torch: " + "; ".join(
            f"{r['threads']} thread(s) batch {r['batch']}: {r['ms'][key(TORCH, UNREAD_ONLY)]:.2f}"
            f" ms, speedup {r['speedup'][key(TORCH, UNREAD_ONLY)]:.2f}x" for r in whatif_rows)
            + "."]
    if noisy:
        lines += ["", f"Noisy rows (upper quartile > {NOISY}x the lower quartile for some "
                  f"network, i.e. other jobs competed for the cores): {'; '.join(noisy)}. "
                  "Their ratios are not reliable."]
    main_n = st["threads"][0]
    b64 = [r for r in res["latency"] if r["threads"] == main_n and r["batch"] == 64]
    if b64:
        mac_ratio = fl["dense_flops"] / fl["flops"]
        checks = []
        for rt in runtimes:
            sp = b64[0]["speedup"][key(rt, "slim")]
            checks.append(f"{rt} {sp:.2f}x: speedup >= {TARGET_SPEEDUP_B64}x "
                          f"{'met' if sp >= TARGET_SPEEDUP_B64 else '**MISSED**'}, MAC ratio / "
                          f"speedup {mac_ratio / sp:.2f} <= {TARGET_MAC_GAP} "
                          f"{'met' if mac_ratio / sp <= TARGET_MAC_GAP else '**MISSED**'}")
        lines += ["", f"Targets of issue 17 at batch 64 ({main_n} threads), slim against dense, "
                  f"MAC ratio {mac_ratio:.2f}x: " + "; ".join(checks) + "."]
        if rd:
            rmac = fl["dense_flops"] / rd["flops"]
            lines += ["", f"{rname} (MAC ratio {rmac:.2f}x) at batch 64 ({main_n} threads): "
                      + "; ".join(f"{rt} speedup {b64[0]['speedup'][key(rt, rname)]:.2f}x, "
                                  f"{b64[0]['speedup'][key(rt, 'round_to gain')]:.2f}x slim's"
                                  for rt in runtimes) + "."]
    lines += [
        "",
        "Per layer: zero output / input channels of the weights (`lilnetx.stats.layer_stats`), "
        "channels left by slim, and input channels of the dense network that are read (non-zero "
        "weight slice) although their activation is identically zero (dead: slim drops these "
        "reads when the channel is dead for every input) or constant on 512 test images.",
        "",
        "| layer | shape | slice sparsity | zero out | zero in | out kept | in kept "
        + (f"| out kept {rname} " if rd else "")
        + "| in dead but read | in constant but read |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if rd else ""),
    ]
    for r in res["layers"]:
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['slice_sparsity']:.3f} | "
            f"{r['out_channels_zero']}/{r['out_channels']} | "
            f"{r['in_channels_zero']}/{r['in_channels']} | {r['out_kept']} | {r['in_kept']} | "
            + (f"{rd['out_kept'].get(r['name'])} | " if rd else "")
            + f"{r['in_dead_but_read']} | {r['in_const_but_read']} |")
    a = res["analysis"]
    lines += [
        "",
        f"Totals: {a['zero_out']} output channels have all-zero weights, slim removed "
        f"{a['removed']} of {a['out_total']} output channels; {a['dead_read']} input channels "
        f"are read although identically zero and {a['const_read']} although constant. "
        f"k x k conv slices (k > 1): {a['kxk_slices_dense']:,} in the dense network, "
        f"{a['kxk_slices_nonzero']:,} of them non-zero "
        f"({a['kxk_slices_nonzero'] / a['kxk_slices_dense']:.1%}); the slim network keeps "
        f"{a['kxk_slices_slim']:,} slices, of which "
        f"{1 - a['kxk_slices_nonzero'] / a['kxk_slices_slim']:.1%} are still zero.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                    help="thread count(s) of the latency measurement, torch threads and ONNX "
                         "Runtime intra-op threads (default 2 1; the first one is judged "
                         "against the target)")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="torch threads while training (default 1)")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-root", default=None)
    for k in ("epochs", "limit", "batch_size", "rounds", "block", "warmup"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None)
    for k in ("lr", "lambda_sparsity"):
        ap.add_argument("--" + k.replace("_", "-"), type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-path", default="/tmp/lilnetx-slim-bench.lnx",
                    help="where the trained model's .lnx file goes")
    ap.add_argument("--load", default=None, help="measure this .lnx file instead of training")
    ap.add_argument("--round-to", type=int, default=8,
                    help="also measure slim(..., round_to=N) (default 8; 0: skip)")
    ap.add_argument("--no-onnx", action="store_true",
                    help="torch only: skip the ONNX export and the ONNX Runtime timings")
    ap.add_argument("--no-what-if", action="store_true",
                    help="skip the reference network slimmed without dropping dead reads")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny training, few rounds")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown file whose `slim` section to (re)write")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v
                for k, v in base.items()}
    settings.update(threads=args.threads, train_threads=args.train_threads, seed=args.seed,
                    model_path=args.load or args.model_path, loadavg_before=loadavg(),
                    round_to=args.round_to or None, onnx=not args.no_onnx)
    torch.manual_seed(args.seed)

    plain, info, stats, arch = load(args) if args.load else train(args, settings)
    print(f"accuracy {info['accuracy']:.4f}, slice sparsity {info['slice_sparsity']:.4f}",
          flush=True)
    slim_net, flops = slim_metrics(plain, arch, latency=False)
    x = example_input(arch)
    flops["slim_sparse_flops"] = count_macs(slim_net, x)["sparse_flops"]
    flops["out_channels_dense"], flops["out_channels_slim"] = out_channels(plain), \
        out_channels(slim_net)

    data_name = arch.get("data", {}).get("name", args.dataset)
    splits = create_dataset(data_name, args.data_root)
    probe = torch.stack([splits.test[i][0] for i in range(min(512, len(splits.test)))])
    activity = input_activity(plain, probe)
    layers = channel_table(plain, slim_net, stats, activity)
    check = compare(plain, slim_net, splits)
    analysis = slice_density(plain, slim_net)
    analysis.update({"zero_out": sum(r["out_channels_zero"] for r in layers),
                "out_total": flops["out_channels_dense"],
                "removed": flops["out_channels_dense"] - flops["out_channels_slim"],
                "dead_read": sum(r["in_dead_but_read"] or 0 for r in layers),
                "const_read": sum(r["in_const_but_read"] or 0 for r in layers)})
    print(f"channels removed {flops['channel_sparsity']:.4f}, MACs {flops['dense_flops']:,} -> "
          f"{flops['flops']:,}, max |diff| {check['max_abs_diff']:.2e}", flush=True)
    nets = {"dense": plain, "slim": slim_net}
    rounded = None
    if settings["round_to"]:
        r = settings["round_to"]
        rnet = slim(plain, x, round_to=r)
        rounded = {"round_to": r, "flops": count_macs(rnet, x)["flops"],
                   "channel_sparsity": 1.0 - out_channels(rnet) / out_channels(plain),
                   "out_kept": {n: m.weight.shape[0] for n, m in rnet.named_modules()
                                if isinstance(m, nn.Conv2d | nn.Linear)},
                   **compare(plain, rnet, splits)}
        nets[rounded_name(r)] = rnet
        print(f"{rounded_name(r)}: channels removed {rounded['channel_sparsity']:.4f}, MACs "
              f"{rounded['flops']:,}, max |diff| {rounded['max_abs_diff']:.2e}", flush=True)
    whatif = None
    if not args.no_what_if:
        unread = slim(plain, x, drop_dead=False)
        n_dropped = zero_dead_reads(copy.deepcopy(plain).eval(), x)
        whatif = {"reads_dropped": n_dropped, "flops": count_macs(unread, x)["flops"],
                  "channel_sparsity": 1.0 - out_channels(unread) / out_channels(plain),
                  **compare(plain, unread, splits)}
        print(f"{UNREAD_ONLY}: channels removed {whatif['channel_sparsity']:.4f}, MACs "
              f"{whatif['flops']:,}, max |diff| {whatif['max_abs_diff']:.2e}; the library drops "
              f"{n_dropped} dead reads", flush=True)

    shape = (int(arch["in_channels"]), int(arch["image_size"]), int(arch["image_size"]))
    from torch.fx.experimental.optimization import fuse

    torch_nets = {key(TORCH, k): v for k, v in nets.items()}
    if whatif is not None:
        torch_nets[key(TORCH, UNREAD_ONLY)] = unread
    folded_check = {}
    for k, net in nets.items():  # folding BatchNorm changes only float rounding
        torch_nets[key(TORCH_FOLDED, k)] = fuse(net)
        folded_check[k] = compare(net, torch_nets[key(TORCH_FOLDED, k)], splits)["max_abs_diff"]
        print(f"{k} {FOLDED}: max |diff| {folded_check[k]:.2e}", flush=True)
    onnx_paths, onnx_diff = {}, {}
    with tempfile.TemporaryDirectory(prefix="lilnetx-slim-bench-") as tmp:
        if settings["onnx"]:
            for k, net in nets.items():
                onnx_paths[k] = str(Path(tmp) / f"{k.replace(' ', '_').replace('=', '')}.onnx")
                export_onnx(net, x, onnx_paths[k])
                onnx_diff[k] = onnx_check(net, onnx_paths[k], probe)
                print(f"{k} ONNX Runtime vs torch: max |diff| {onnx_diff[k]:.2e}", flush=True)
        latency = measure_latency(torch_nets, onnx_paths, shape, args.threads, settings,
                                  args.seed)
    settings["loadavg_after"] = loadavg()
    res = {"machine": machine(), "settings": settings, "model": info, "flops": flops,
           "check": check, "what_if": whatif, "rounded": rounded, "latency": latency,
           "folded_max_abs_diff": folded_check, "onnx_max_abs_diff": onnx_diff,
           "layers": layers, "analysis": analysis}
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        for r in layers:
            print(f"  {r['name']:22s} {str(r['shape']):18s} ss {r['slice_sparsity']:.3f} "
                  f"zero out {r['out_channels_zero']:3d}/{r['out_channels']:<3d} zero in "
                  f"{r['in_channels_zero']:3d}/{r['in_channels']:<3d} kept out {r['out_kept']} "
                  f"in {r['in_kept']} dead-read {r['in_dead_but_read']} "
                  f"const-read {r['in_const_but_read']}")
    if args.out is not None:
        write_section(args.out, SECTION,
                      markdown(res, command_line("benchmarks/slim_speedup.py", argv)))
        print(f"wrote the `{SECTION}` section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
