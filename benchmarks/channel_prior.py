"""Slim speedup with and without the coupled-channel group prior (issue 17).

Trains ResNet-20 on Fashion-MNIST with :func:`lilnetx.run` once per ``lambda_channel`` (0: the
model without the prior; every other hyperparameter the same, the rate weight included), two
trainings at a time in subprocesses of one torch thread each, and writes each ``.lnx`` file. Then,
with nothing else running, every file is reloaded (``lilnetx.load``), slimmed (``lilnetx.slim``)
and exported to ONNX, and the dense and the slim network are timed side by side in this process:
interleaved rounds (dense then slim, the order alternating), each pass timed on its own, medians,
in torch eager (``torch.inference_mode()``) and in ONNX Runtime (CPU provider, intra-op threads as
given, one inter-op thread, all graph optimizations), at batch 1 and 64 with 1 and 2 threads.

Targets: among the models trained with the prior whose test accuracy is within 1 point of the
model without it, one runs >= 2.0x faster than its dense network at batch 64 with 2 threads in
torch and in ONNX Runtime, and its slim speedup is within 1.3x of its MAC ratio. The section also
gives the accuracy/latency front of the sweep with and without the prior and a plot
(docs/channel_prior.png).

    python benchmarks/channel_prior.py --out docs/benchmarks.md
    python benchmarks/channel_prior.py --quick           # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lilnetx.core.channel_options import CHOICES

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
SECTION = "channel_prior_{scope}"
PLOT = ROOT / "docs" / "channel_prior_{scope}.png"
TARGET_SPEEDUP = 2.0
TARGET_MAC_GAP = 1.3
TARGET_ACC_POINTS = 1.0
FULL = {"epochs": 5, "limit": 12000, "batch_size": 128, "lr": 2e-2, "lambda_sparsity": 1e-6,
        "lambda_rate": 1e-4, "channel_scope": "coupled", "channel_finetune": 0.0,
        "channel_solver": "gradient", "channel_rewind": "none",
        "channels": [0.0, 1e-4, 3e-4, 1e-3, 3e-3], "rounds": 25, "block": 3}
QUICK = {"epochs": 1, "limit": 600, "batch_size": 128, "lr": 2e-2, "lambda_sparsity": 1e-6,
         "lambda_rate": 1e-4, "channel_scope": "coupled", "channel_finetune": 0.0,
         "channel_solver": "gradient", "channel_rewind": "none",
         "channels": [0.0, 1e-3], "rounds": 3, "block": 2}
BATCHES = (1, 64)


# ------------------------------------------------------------------------------ training
def train_one(lam: float, settings: dict, out_dir: Path, seed: int) -> dict:
    """One training (in a subprocess of its own): the .lnx file and its summary."""
    from lilnetx import RunSpec, TrainConfig
    from lilnetx.experiment import finalize, run

    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"],
                      lr=settings["lr"], lambda_sparsity=settings["lambda_sparsity"],
                      lambda_rate=settings["lambda_rate"], lambda_channel=lam,
                      channel_scope=settings["channel_scope"],
                      channel_finetune=settings.get("channel_finetune", 0.0),
                      channel_solver=settings.get("channel_solver", "gradient"),
                      channel_rewind=settings.get("channel_rewind", "none"),
                      channel_block=settings.get("channel_block", 1),
                      channel_cost=settings.get("channel_cost", "params"),
                      channel_round_to=settings.get("channel_round_to", 0),
                      channel_round=settings.get("channel_round", "up"), seed=seed,
                      device="cpu")
    t0 = time.perf_counter()
    outcome = run(RunSpec(model="resnet20", dataset="fashion_mnist", limit=settings["limit"],
                          train=cfg))
    seconds = time.perf_counter() - t0
    path = out_dir / f"channel-{lam:g}.lnx"
    summary = finalize(outcome, str(path), latency=False)
    keep = ("accuracy", "val_accuracy", "size_bytes", "slice_sparsity", "channel_sparsity",
            "flops", "dense_flops")
    removed = [h["channels_removed"] for h in outcome.result.history if "channels_removed" in h]
    res = {"lambda_channel": lam, "path": str(path), "train_seconds": seconds,
           "settings": settings, "removed_at_switch": removed[0] if removed else None,
           **{k: float(summary[k]) for k in keep if k in summary}}
    (out_dir / f"channel-{lam:g}.json").write_text(json.dumps(res))
    return res


def _same_training(lam: float, kept: dict | None, settings: dict) -> bool:
    """Whether a kept training of ``lambda_channel = lam`` is the one ``settings`` asks for
    (without the prior, ``channel_scope``, ``channel_finetune`` and ``channel_solver`` change
    nothing; a kept summary without a solver was trained with the gradient one)."""
    drop = {"channels", "rounds", "block"} | (
        {"channel_scope", "channel_finetune", "channel_solver", "channel_rewind",
         "channel_block", "channel_cost", "channel_round_to", "channel_round"}
        if lam == 0 else set())

    def trained(s: dict) -> dict:
        return {k: v for k, v in {"channel_solver": "gradient", "channel_rewind": "none",
                                  "channel_block": 1, "channel_cost": "params",
                                  "channel_round_to": 0, "channel_round": "up",
                                  **s}.items() if k not in drop}

    return kept is not None and trained(kept) == trained(settings)


def train_all(settings: dict, out_dir: Path, seed: int, jobs: int) -> list[dict]:
    todo = list(settings["channels"])
    running: list[tuple[float, subprocess.Popen]] = []
    done: list[dict] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while todo or running:
        while todo and len(running) < jobs:
            lam = todo.pop(0)
            kept = out_dir / f"channel-{lam:g}.json"
            if kept.exists() and _same_training(lam, json.loads(kept.read_text()).get(
                    "settings"), settings):
                done.append(json.loads(kept.read_text()))  # trained by an earlier run
                continue
            cmd = [sys.executable, __file__, "--train-one", str(lam), "--dir", str(out_dir),
                   "--seed", str(seed), "--settings", json.dumps(settings)]
            log = open(out_dir / f"channel-{lam:g}.log", "w")
            running.append((lam, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                  env=env)))
            print(f"[channel] training lambda_channel={lam:g}", file=sys.stderr, flush=True)
        time.sleep(2)
        for lam, proc in list(running):
            if proc.poll() is None:
                continue
            running.remove((lam, proc))
            if proc.returncode:
                tail = (out_dir / f"channel-{lam:g}.log").read_text()[-2000:]
                raise RuntimeError(f"training lambda_channel={lam:g} failed:\n{tail}")
            done.append(json.loads((out_dir / f"channel-{lam:g}.json").read_text()))
            print(f"[channel] done lambda_channel={lam:g}: accuracy {done[-1]['accuracy']:.4f}",
                  file=sys.stderr, flush=True)
    return sorted(done, key=lambda r: r["lambda_channel"])


# ------------------------------------------------------------------------------ timing
def interleaved(fns: dict, rounds: int, block: int, warmup: int = 10) -> dict[str, float]:
    """Median ms per call of each function, in interleaved rounds (order alternating)."""
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            for _ in range(block):
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    return {n: 1000 * statistics.median(v) for n, v in times.items()}


def measure(res: dict, settings: dict, threads_list: list[int], work: Path,
            other: str | None = None, round_to: tuple[int, ...] = ()) -> dict:
    """Latency and MACs of the network in ``res["path"]`` ("dense") against its slim export,
    or, with ``other`` (another ``.lnx`` file), against that file's network as it is. For every
    ``N`` in ``round_to`` (without ``other``), ``lilnetx.slim(..., round_to=N)`` is timed too,
    in the same interleaved rounds (keys ``*_slim{N}``)."""
    import numpy as np

    import lilnetx
    from lilnetx import count_macs
    from lilnetx.deploy.export import export_onnx
    from lilnetx.deploy.latency import onnx_session, torch_threads

    dense = lilnetx.load(res["path"]).eval()
    example = torch.randn(2, 1, 28, 28)
    nets = {"dense": dense,
            "slim": (lilnetx.load(other) if other else lilnetx.slim(dense, example)).eval()}
    rounded = [] if other else list(round_to)
    for n in rounded:  # N, or "Nn": round_to N with round_narrow False
        nets[f"slim{n}"] = lilnetx.slim(dense, example, round_to=int(str(n).rstrip("n")),
                                        round_narrow=not str(n).endswith("n")).eval()
    macs = {k: count_macs(n, example[:1])["flops"] for k, n in nets.items()}
    paths = {}
    for name, net in nets.items():
        stem = Path(other).stem if other and name == "slim" else Path(res["path"]).stem
        paths[name] = work / f"{stem}-{name}.onnx"
        export_onnx(net, example[:1], paths[name])

    def widths(net: torch.nn.Module, conv: str = "conv2") -> list[int]:
        return [m.out_channels for n, m in net.named_modules() if n.endswith(f".{conv}")]

    out = {"macs_dense": macs["dense"], "macs_slim": macs["slim"],
           "mac_ratio": macs["dense"] / macs["slim"], "conv2_widths": widths(nets["slim"]),
           "conv1_widths": widths(nets["slim"], "conv1"), "latency": {}}
    out["round_to"] = rounded
    for n in rounded:
        out.update({f"mac_ratio_slim{n}": macs["dense"] / macs[f"slim{n}"],
                    f"conv2_widths_slim{n}": widths(nets[f"slim{n}"])})
    for threads in threads_list:
        sessions = {k: onnx_session(str(p), threads=threads, spinning=False)
                    for k, p in paths.items()}
        for batch in BATCHES:
            x = torch.randn(batch, 1, 28, 28)
            xn = x.numpy().astype(np.float32)
            with torch_threads(threads), torch.inference_mode():
                t = interleaved({k: (lambda x=x, n=n: n(x)) for k, n in nets.items()},
                                settings["rounds"], settings["block"])
            feeds = {k: {s.get_inputs()[0].name: xn} for k, s in sessions.items()}
            o = interleaved({k: (lambda s=s, f=feeds[k]: s.run(None, f))
                             for k, s in sessions.items()},
                            settings["rounds"], settings["block"])
            cell = {}
            for k in nets:
                cell[f"torch_{k}"], cell[f"ort_{k}"] = t[k], o[k]
                if k != "dense":
                    cell[f"torch_speedup{k[4:]}"] = t["dense"] / t[k]
                    cell[f"ort_speedup{k[4:]}"] = o["dense"] / o[k]
            out["latency"][f"{threads}x{batch}"] = cell
    return out


# ------------------------------------------------------------------------------ report
def best_ms(row: dict, runtime: str) -> float:
    """The fastest slim export of ``row`` in ``runtime`` (``torch`` or ``ort``), batch 64, 2
    threads: the minimum over every slim variant timed (plain and each ``round_to``), in ms."""
    lat = row["latency"]["2x64"]
    return min(v for k, v in lat.items() if k.startswith(f"{runtime}_slim"))


def front(rows: list[dict], runtime: str) -> list[dict]:
    """The rows no other row beats in both accuracy and :func:`best_ms` latency."""
    ms = {id(r): best_ms(r, runtime) for r in rows}
    return [r for r in rows if not any(
        o["accuracy"] >= r["accuracy"] and ms[id(o)] <= ms[id(r)]
        and (o["accuracy"] > r["accuracy"] or ms[id(o)] < ms[id(r)])
        for o in rows)]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (runtime, title) in zip(axes, (("torch", "torch eager"),
                                           ("ort", "ONNX Runtime")), strict=True):
        base = rows[0]
        ax.axvline(base["latency"]["2x64"][f"{runtime}_dense"], color="#999", ls=":",
                   label="dense network")
        for group, color, label in ((False, "#1f77b4", "without the prior"),
                                    (True, "#d62728", "with lambda_channel > 0")):
            rs = [r for r in rows if (r["lambda_channel"] > 0) == group]
            ax.scatter([best_ms(r, runtime) for r in rs],
                       [100 * r["accuracy"] for r in rs], color=color, label=label, zorder=3)
            for r in rs:
                ax.annotate(f"{r['lambda_channel']:g}", (best_ms(r, runtime),
                                                         100 * r["accuracy"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(f"{title}, batch 64, 2 threads")
        ax.set_xlabel("slim latency, fastest export variant (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("ResNet-20, Fashion-MNIST: accuracy vs slim latency by lambda_channel")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rounded_keys(rows: list[dict]) -> list[str]:
    """``["slim8", ...]``: the rounded slim variants every row was timed with."""
    common = None
    for r in rows:
        got = r.get("round_to") or []
        got = [got] if isinstance(got, int) else got
        common = [n for n in got if common is None or n in common]
    return [f"slim{n}" for n in common or []]


def _solver(settings: dict) -> str:
    return settings.get("channel_solver", "gradient")


def markdown(rows: list[dict], settings: dict, threads_list: list[int], argv: list[str],
             info: dict) -> str:
    from _report import command_line, machine_line

    base = rows[0]
    lines = [
        "## Coupled-channel group prior: slim speedup (`lambda_channel`, channel_scope "
        f"{settings['channel_scope']}" + (f", channel_finetune {settings['channel_finetune']:g}"
                                          if settings.get("channel_finetune") else "")
        + (f", channel_solver {_solver(settings)}" if _solver(settings) != "gradient" else "")
        + (f", channel_rewind {settings['channel_rewind']}"
           if settings.get("channel_rewind", "none") != "none" else "")
        + (f", channel_block {settings['channel_block']}"
           if settings.get("channel_block", 1) != 1 else "")
        + (f", channel_cost {settings['channel_cost']}"
           if settings.get("channel_cost", "params") != "params" else "")
        + (f", channel_round_to {settings['channel_round_to']}"
           if settings.get("channel_round_to", 0) else "")
        + (f", channel_round {settings['channel_round']}"
           if settings.get("channel_round", "up") != "up" else "")
        + ")", "",
        machine_line(), f"Load average before / after: {info['load_before']} / "
        f"{info['load_after']}.", "", "Reproduce:", "", "```",
        command_line("benchmarks/channel_prior.py", argv), "```", "",
        f"ResNet-20 (width 1) on Fashion-MNIST, {settings['limit']:,} training images, "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {settings['lr']:g}, "
        f"lambda_rate {settings['lambda_rate']:g}, lambda_sparsity "
        f"{settings['lambda_sparsity']:g}, channel_scope {settings['channel_scope']}, "
        f"channel_finetune {settings.get('channel_finetune', 0):g}"
        + (" (the prior on the first part of the steps, then the channels it removed held at "
           "zero and the rest fine-tuned without it)" if settings.get("channel_finetune")
           else "") + f", channel_solver {_solver(settings)}"
        + (" (the prior as a proximal shrink of lr * lambda_channel per step after the Adam "
           "step, not a loss term)" if _solver(settings) == "proximal" else "")
        + {"lr": ", channel_rewind lr (the learning-rate schedule restarted at the switch)",
           "weights": ", channel_rewind weights (at the switch every weight back to its value "
           "at step 0 and the learning rate restarted: the architecture the prior found, "
           "trained from its initialization)"}.get(settings.get("channel_rewind", "none"), "")
        + (f", channel_block {settings['channel_block']} (the prior shrinks and removes "
           f"{settings['channel_block']} channels of a group at a time)"
           if settings.get("channel_block", 1) != 1 else "")
        + {"macs": ", channel_cost macs (each channel's prior term weighted by its "
                   "multiply-accumulates per weight, mean 1: MorphNet-style)",
           "sqrt_macs": ", channel_cost sqrt_macs (each channel's prior term weighted by the "
                        "square root of its multiply-accumulates per weight, mean 1)",
           }.get(settings.get("channel_cost", "params"), "")
        + ((f", channel_round_to {settings.get('channel_round_to', 0)} (at the switch every "
            "dependency group that lost channels got back the removed channels that lived "
            "longest, from their step-0 values, until its width was a multiple of it)"
            if settings.get("channel_round", "up") == "up" else
            f", channel_round_to {settings.get('channel_round_to', 0)} with channel_round "
            "nearest (at the switch every dependency group that lost channels and kept at "
            "least that many went to the nearest multiple of it: removed channels given back "
            "from their step-0 values, or its weakest kept channels taken away)")
           if settings.get("channel_round_to", 0) else "")
        + ", seed "
        f"{info['seed']}, one torch thread per training "
        f"(two at a time); one training per `lambda_channel`, everything else equal. Latency: "
        f"{settings['rounds']} interleaved rounds x {settings['block']} passes of the dense and "
        "the slim network (`lilnetx.load` of the file, then `lilnetx.slim`), order alternating, "
        "medians; ONNX Runtime on the exported ONNX of each (CPU provider, intra-op threads as "
        "given, one inter-op thread, all graph optimizations, intra-op spinning off: "
        "`benchmarks/ort_spinning.py`). Speedup = dense median / slim "
        "median. MAC ratio = dense MACs / slim MACs (`lilnetx.count_macs`)."
        + (" Round_to N: `lilnetx.slim(..., round_to=N)` (every channel group of the dependency graph that loses "
           "channels keeps a multiple of N; Nn: the same with `round_narrow=False`, a group "
           "kept narrower than N left as it is), timed in the same interleaved rounds."
           if _rounded_keys(rows) else ""), "",
        "| lambda_channel | test accuracy | size | slice sparsity | channels removed | conv2 widths "
        "(per block) | conv1 widths | MAC ratio | torch 2 thr b64 dense / slim ms | speedup | ORT 2 thr b64 "
        "dense / slim ms | speedup | train s |",
        "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    rks = _rounded_keys(rows)
    for rk in rks:
        lines[-2] = lines[-2][:-len(" train s |")] + (
            f" round_to {rk[4:]}: conv2 widths | MAC ratio | torch speedup | ORT speedup | "
            "train s |")
        lines[-1] = lines[-1][:-len("---:|")] + "---|---:|---:|---:|---:|"
    for r in rows:
        lat = r["latency"]["2x64"]
        lines.append(
            f"| {r['lambda_channel']:g} | {100 * r['accuracy']:.2f}% | "
            f"{r.get('size_bytes', 0) / 1000:.1f} KB | {100 * r.get('slice_sparsity', 0):.1f}% | "
            f"{100 * r.get('channel_sparsity', 0):.1f}% | {' '.join(map(str, r['conv2_widths']))}"
            f" | {' '.join(map(str, r.get('conv1_widths', ['-'])))} | {r['mac_ratio']:.2f}x | {lat['torch_dense']:.1f} / {lat['torch_slim']:.1f} | "
            f"{lat['torch_speedup']:.2f}x | {lat['ort_dense']:.1f} / {lat['ort_slim']:.1f} | "
            f"{lat['ort_speedup']:.2f}x | "
            + "".join(f"{' '.join(map(str, r[f'conv2_widths_{rk}']))} | "
                      f"{r[f'mac_ratio_{rk}']:.2f}x | {lat[f'torch_speedup{rk[4:]}']:.2f}x | "
                      f"{lat[f'ort_speedup{rk[4:]}']:.2f}x | " for rk in rks)
            + f"{r['train_seconds']:.0f} |")
    lines += ["", "Every configuration (ms, dense / slim"
              + "".join(f" / slim round_to {rk[4:]}" for rk in rks)
              + (", speedups of each" if rks else ", speedup")
              + "):", "",
              "| lambda_channel | " + " | ".join(
                  f"{rt} {t} thr b{b}" for t in threads_list for b in BATCHES
                  for rt in ("torch", "ORT")) + " |",
              "|---:|" + "---:|" * (2 * len(threads_list) * len(BATCHES))]
    for r in rows:
        cells = []
        for t in threads_list:
            for b in BATCHES:
                lat = r["latency"][f"{t}x{b}"]
                for rt in ("torch", "ort"):
                    ms = f"{lat[f'{rt}_dense']:.2f} / {lat[f'{rt}_slim']:.2f}"
                    sp = f"{lat[f'{rt}_speedup']:.2f}x"
                    for rk in rks:
                        ms += f" / {lat[f'{rt}_{rk}']:.2f}"
                        sp += f", {lat[f'{rt}_speedup{rk[4:]}']:.2f}x"
                    cells.append(f"{ms} ({sp})")
        lines.append(f"| {r['lambda_channel']:g} | " + " | ".join(cells) + " |")
    # targets
    ok = [r for r in rows[1:] if 100 * (base["accuracy"] - r["accuracy"]) <= TARGET_ACC_POINTS]
    lines += ["", f"Targets (against lambda_channel 0, test accuracy {100 * base['accuracy']:.2f}%"
              f"; a model qualifies within {TARGET_ACC_POINTS:g} point):", ""]
    if not ok:
        lines.append("- no model trained with the prior is within 1 point of accuracy: "
                     "**missed**.")
    else:
        variants = ["slim", *rks]

        def score(rv):  # the slower runtime's speedup of one (model, slim variant)
            r, v = rv
            lat = r["latency"]["2x64"]
            return min(lat[f"torch_speedup{v[4:]}"], lat[f"ort_speedup{v[4:]}"])

        best, v = max(((r, v) for r in ok for v in variants), key=score)
        lat = best["latency"]["2x64"]
        ts, os_ = lat[f"torch_speedup{v[4:]}"], lat[f"ort_speedup{v[4:]}"]
        macr = best["mac_ratio" if v == "slim" else f"mac_ratio_{v}"]
        gap = macr / ts
        name = ("`lilnetx.slim`" if v == "slim" else
                f"`lilnetx.slim(..., round_to={v[4:].rstrip('n')}"
                + (", round_narrow=False)`" if v.endswith("n") else ")`"))
        verdict = lambda c: "met" if c else "**missed**"  # noqa: E731
        lines += [
            f"- best qualifying model: lambda_channel {best['lambda_channel']:g}, "
            f"{100 * best['accuracy']:.2f}% ({100 * (best['accuracy'] - base['accuracy']):+.2f} "
            f"points), exported with {name} (of the variants timed, the one whose slower "
            "runtime is fastest).",
            f"- torch, batch 64, 2 threads: {ts:.2f}x (target >= "
            f"{TARGET_SPEEDUP:g}x): {verdict(ts >= TARGET_SPEEDUP)}.",
            f"- ONNX Runtime, batch 64, 2 threads: {os_:.2f}x (target >= "
            f"{TARGET_SPEEDUP:g}x): {verdict(os_ >= TARGET_SPEEDUP)}.",
            f"- MAC ratio {macr:.2f}x / torch speedup {ts:.2f}x = "
            f"{gap:.2f} (target <= {TARGET_MAC_GAP:g}): {verdict(gap <= TARGET_MAC_GAP)}.",
            f"- without the prior (lambda_channel 0): {base['latency']['2x64']['torch_speedup']:.2f}x"
            f" torch, {base['latency']['2x64']['ort_speedup']:.2f}x ORT, MAC ratio "
            f"{base['mac_ratio']:.2f}x."]
    tf = {r["lambda_channel"] for r in front(rows, "torch")}
    of = {r["lambda_channel"] for r in front(rows, "ort")}
    lines += ["", "Accuracy/latency front of the sweep (batch 64, 2 threads, each model's "
              "fastest slim export of those timed): torch "
              f"{sorted(tf)}, ONNX Runtime {sorted(of)} (lambda_channel values). "
              f"![accuracy vs slim latency](channel_prior_{settings['channel_scope']}.png)",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--channels", type=float, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--scope", dest="channel_scope", choices=("coupled", "all"), default=None)
    ap.add_argument("--finetune", dest="channel_finetune", type=float, default=None,
                    help="channel_finetune of the trainings with the prior (default 0)")
    ap.add_argument("--solver", dest="channel_solver", choices=("gradient", "proximal"),
                    default=None, help="channel_solver of the trainings (default gradient)")
    ap.add_argument("--rewind", dest="channel_rewind", choices=("none", "lr", "weights"),
                    default=None, help="channel_rewind of the trainings (default none)")
    ap.add_argument("--channel-block", dest="channel_block", type=int, default=None,
                    help="channel_block of the trainings (default 1)")
    ap.add_argument("--cost", dest="channel_cost", choices=CHOICES["channel_cost"], default=None,
                    help="channel_cost of the trainings (default params)")
    ap.add_argument("--train-round", dest="channel_round", choices=CHOICES["channel_round"],
                    default=None, help="channel_round of the trainings (default up)")
    ap.add_argument("--train-round-to", dest="channel_round_to", type=int, default=None,
                    help="channel_round_to of the trainings (default 0)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--round-to", nargs="+", default=["8", "16"],
                    help="also time lilnetx.slim(..., round_to=N) for each N (0: none; Nn: "
                    "with round_narrow=False, groups under N left as they are)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved timing rounds per configuration (default 25)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="keep the files here")
    ap.add_argument("--reuse", action="store_true", help="measure the files already in --dir")
    ap.add_argument("--train-only", action="store_true",
                    help="train (into --dir) and stop; time later with --reuse")
    ap.add_argument("--from-results", action="store_true",
                    help="write the report of the run kept in --dir (no training, no timing)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--train-one", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_one is not None:
        train_one(args.train_one, json.loads(args.settings), Path(args.dir), args.seed)
        return 0
    settings = dict(QUICK if args.quick else FULL)
    for k in ("channels", "epochs", "limit", "channel_scope", "channel_finetune",
              "channel_solver", "channel_rewind", "channel_block", "channel_cost",
              "channel_round_to", "channel_round"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    if args.rounds is not None:
        settings["rounds"] = args.rounds
    if 0.0 not in settings["channels"]:
        settings["channels"] = [0.0] + settings["channels"]
    work = Path(args.dir or tempfile.mkdtemp(prefix="lilnetx-channel-"))
    work.mkdir(parents=True, exist_ok=True)
    info = {"seed": args.seed, "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if args.from_results:  # the report of an earlier run, measured already
        saved = json.loads((work / "results.json").read_text())
        if isinstance(saved, list):  # written before the settings were kept beside the rows
            saved = {"rows": saved, "settings": {**saved[-1].get("settings", settings)},
                     "info": {**info, "load_after": "not recorded"}, "argv": argv}
        rows, settings, info = saved["rows"], saved["settings"], saved["info"]
        return _report(rows, settings, args, saved["argv"], info)
    if args.reuse:
        rows = sorted((json.loads(p.read_text()) for p in work.glob("channel-*.json")),
                      key=lambda r: r["lambda_channel"])
    else:
        rows = train_all(settings, work, args.seed, args.jobs)
        if args.train_only:
            return 0
    # one untimed pass over every model and configuration first: the first networks timed
    # would otherwise pay the process's cold start (kernel selection, allocator growth)
    measure(rows[0], {**settings, "rounds": 2, "block": 1}, args.threads, work)
    for r in rows:
        print(f"[channel] timing lambda_channel={r['lambda_channel']:g}", file=sys.stderr,
              flush=True)
        r.update(measure(r, settings, args.threads, work, round_to=tuple(
            int(n) if n.isdigit() else n for n in args.round_to if n != "0")))
    info["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if 2 not in args.threads:
        raise SystemExit("--threads must include 2 (the target's thread count)")
    (work / "results.json").write_text(json.dumps(
        {"rows": rows, "settings": settings, "info": info, "argv": argv}, indent=1))
    return _report(rows, settings, args, argv, info)


def _report(rows, settings, args, argv, info) -> int:
    from _report import publish

    scope = settings.get("channel_scope", "all")
    settings = {**settings, "channel_scope": scope}
    # another budget than the default gets a section (and a plot) of its own
    tag = scope if settings["epochs"] == FULL["epochs"] else f"{scope}_{settings['epochs']}ep"
    if settings.get("channel_finetune"):
        tag += f"_ft{settings['channel_finetune']:g}"
    if _solver(settings) != "gradient":
        tag += f"_{_solver(settings)}"
    if settings.get("channel_rewind", "none") != "none":
        tag += f"_rewind_{settings['channel_rewind']}"
    if settings.get("channel_block", 1) != 1:
        tag += f"_block{settings['channel_block']}"
    if settings.get("channel_cost", "params") != "params":
        tag += f"_{settings['channel_cost']}"
    if settings.get("channel_round_to", 0):
        tag += f"_trainround{settings['channel_round_to']}"
        if settings.get("channel_round", "up") != "up":
            tag += f"{settings['channel_round']}"
    if args.out:
        plot(rows, Path(str(PLOT).format(scope=tag)))
    publish(markdown(rows, settings, args.threads, argv, info).replace(
        f"channel_prior_{scope}.png", f"channel_prior_{tag}.png"), args.out,
        SECTION.format(scope=tag), write=bool(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
