"""Entropy coding of the ``.lnx`` file: coding efficiency and coder speed.

(a) **Efficiency.** Real files written by :func:`lilnetx.fileformat.save` for models built the way
the library builds them (:func:`lilnetx.experiment.build`: create, :func:`lilnetx.convert`,
architecture description), once with the latents as initialized and once with most slices zeroed.
:func:`lilnetx.fileformat.report.inspect` gives the latent payload, the information content of the latents
under the tables stored in the file and their ratio (``coding_efficiency``, target <= 1.01); the
rest of the file (tables, decoders, BatchNorm and biases, architecture, header) is reported
separately as overhead.

(b) **Speed.** :func:`lilnetx.fileformat.codec.encode` and :func:`lilnetx.fileformat.codec.decode` on a ResNet-50-sized
latent set (the kernel-shape groups of torchvision's ResNet-50, ~25.5M latents; 3x3 and 7x7 rows
with ~80% zero slices and small integers elsewhere, 1x1 and dense groups of small integers, tables
fitted to the symbols), on one core (process pinned to one CPU, torch/BLAS threads 1), repeated,
medians; then the whole ``fileformat.save`` / ``fileformat.load`` path of a converted
``tv:resnet50`` (1000 classes, 224x224) with randomized sparse latents.

    python benchmarks/codec.py                          # full run, tables on stdout
    python benchmarks/codec.py --quick                  # smoke run (1/10-size latent set)
    python benchmarks/codec.py --out docs/benchmarks.md # (re)write the `codec` section there
"""

from __future__ import annotations

import os

# One core for the coder: fix the BLAS/OpenMP pools before numpy and torch are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import command_line, loadavg, machine, machine_line, write_section  # noqa: E402

from lilnetx import fileformat  # noqa: E402
from lilnetx.core.entropy import _quantize_pmf  # noqa: E402
from lilnetx.core.latent import group_key  # noqa: E402
from lilnetx.core.model import LilNetXModel, decode  # noqa: E402
from lilnetx.data import DataInfo, DataSplits  # noqa: E402
from lilnetx.experiment import RunSpec, build  # noqa: E402
from lilnetx.fileformat import codec  # noqa: E402
from lilnetx.fileformat.report import inspect  # noqa: E402
from lilnetx.layers import convertible_layers  # noqa: E402
from lilnetx.models import create_model  # noqa: E402

SECTION = "codec"
TARGET_EFFICIENCY = 1.01
TARGET_SECONDS = 2.0

# case name, model, data set the input shape is taken from, (C, H, W), width
CASES = [
    ("resnet20-w1", "resnet20", "cifar10", (3, 32, 32), 1.0),
    ("resnet20-w4", "resnet20", "cifar10", (3, 32, 32), 4.0),
    ("lenet5", "lenet5", "fashion_mnist", (1, 28, 28), 1.0),
]
_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
          "fashion_mnist": ((0.2860,), (0.3530,))}


# ----------------------------------------------------------------------------- helpers

def pin_one_core() -> int | None:
    """Pin this process to one CPU it may run on (the last one); returns it, or None."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return cpus[-1]
    except (AttributeError, OSError):
        return None


def timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and process-CPU seconds of ``repeats`` calls of ``fn``; the last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        out = None  # drop the previous result first so it is not alive during the next call
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus, out


def shape_only_splits(dataset: str, shape: tuple[int, int, int]) -> DataSplits:
    """Splits that carry only the :class:`DataInfo` :func:`lilnetx.experiment.build` reads."""
    c, h, w = shape
    mean, std = _STATS[dataset]
    info = DataInfo(dataset, c, h, w, 10, mean, std)
    empty = TensorDataset(torch.empty(0, c, h, w), torch.empty(0, dtype=torch.long))
    return DataSplits(empty, empty, empty, info, None)


def sparsify(model: LilNetXModel, fraction: float, seed: int) -> None:
    """Zero a random ``fraction`` of the latent slices (rows) of every layer, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.latent_layers():
            lat = layer.latent
            mask = torch.rand(lat.shape[0], generator=gen) < fraction
            lat[mask] = 0.0


def randomize_sparse(model: LilNetXModel, zero_fraction: float, scale: float, seed: int) -> None:
    """Latents := rounded Laplace(0, scale) integers clipped to [-8, 8]; in groups with k x k rows
    (k > 1) a random ``zero_fraction`` of the slices is zeroed (a trained sparse model's shape)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.latent_layers():
            lat = layer.latent
            u = torch.rand(lat.shape, generator=gen, dtype=torch.float64) - 0.5
            v = (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).round().clamp(-8, 8)
            if lat.shape[1] > 1:
                v[torch.rand(lat.shape[0], generator=gen) < zero_fraction] = 0
            lat.copy_(v.to(lat.dtype))


def fit_priors(model: LilNetXModel, steps: int, seed: int, sample: int = 32768) -> None:
    """Fit the probability models to the current integer latents (Adam on the rate of a random
    sample of each group's rows per step), as training would; the latents do not change."""
    gen = torch.Generator().manual_seed(seed)
    groups = {g: torch.cat([layer.latent_int() for _, layer in layers])
              for g, layers in model.groups().items()}
    opt = torch.optim.Adam(model.prior_parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.zeros(())
        for g, lat in groups.items():
            rows = lat[torch.randint(0, lat.shape[0], (min(sample, lat.shape[0]),), generator=gen)]
            loss = loss + model.priors[g].bits(rows.t()) / rows.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def entropy_bytes(model: LilNetXModel) -> float:
    """Empirical entropy of the integer latents, per group channel, in bytes: the size bound of
    any static per-channel table (so information / entropy is the cost of the model's tables)."""
    total = 0.0
    for _, layers in model.groups().items():
        lat = torch.cat([layer.latent_int() for _, layer in layers]).numpy().astype(np.int64)
        for c in range(lat.shape[1]):
            _, counts = np.unique(lat[:, c], return_counts=True)
            total -= float((counts * np.log2(counts / counts.sum())).sum())
    return total / 8


def overhead(info: dict) -> dict:
    parts = info["breakdown"]
    payload = parts["latent payload"]
    rest = info["size_bytes"] - payload
    return {"overhead_bytes": rest, "overhead_pct": 100.0 * rest / info["size_bytes"],
            "parts": {k: v for k, v in parts.items() if k != "latent payload"}}


def efficiency_row(name: str, variant: str, model: LilNetXModel, path: Path) -> dict:
    size = fileformat.save(model, path)
    info = inspect(path)
    assert info["size_bytes"] == size
    payload = info["breakdown"]["latent payload"]
    latents = sum(layer.latent.numel() for _, layer in model.latent_layers())
    row = {"case": name, "variant": variant, "latents": latents, "file_bytes": size,
           "payload_bytes": payload, "information_bytes": info["latent_information_bits"] / 8,
           "entropy_bytes": entropy_bytes(model),
           "coding_efficiency": info["coding_efficiency"],
           "slice_sparsity": info["slice_sparsity"], "weight_sparsity": info["weight_sparsity"]}
    row.update(overhead(info))
    return row


# ----------------------------------------------------------------------------- (a) efficiency

def run_efficiency(tmp: Path, sparse_fraction: float, fit_steps: int, seed: int) -> list[dict]:
    rows = []
    for name, model_name, dataset, shape, width in CASES:
        spec = RunSpec(model=model_name, dataset=dataset, width=width)
        spec.train.seed = seed
        model = build(spec, shape_only_splits(dataset, shape))
        rows.append(efficiency_row(name, "init", model, tmp / f"{name}-init.lnx"))
        sparsify(model, sparse_fraction, seed)
        rows.append(efficiency_row(name, f"{sparse_fraction:.0%} slices zeroed", model,
                                   tmp / f"{name}-sparse.lnx"))
        fit_priors(model, fit_steps, seed)
        rows.append(efficiency_row(name, f"{sparse_fraction:.0%} slices zeroed, prior fitted",
                                   model, tmp / f"{name}-sparse-fitted.lnx"))
        print(f"[a] {name}: efficiency " + ", ".join(
            f"{r['variant']} {r['coding_efficiency']:.5f}" for r in rows[-3:]), flush=True)
    return rows


# ----------------------------------------------------------------------------- (b) speed

def resnet50_groups() -> dict[str, tuple[int, int]]:
    """(slices, rows) per kernel-shape group of torchvision's ResNet-50 (1000 classes)."""
    net = create_model("tv:resnet50", in_channels=3, image_size=224, num_classes=1000)
    sizes: dict[str, list[int]] = {}
    for _, m in convertible_layers(net):
        w = m.weight
        rows = 1 if w.dim() == 2 else w.shape[2] * w.shape[3]
        sizes.setdefault(group_key(m), [0, rows])[0] += w.numel() // rows
    return {g: (s, r) for g, (s, r) in sizes.items()}


def synthetic_segments(groups: dict[str, tuple[int, int]], zero_fraction: float, scale: float,
                       fraction: float, seed: int) -> tuple[list, dict]:
    """Codec segments ``(symbols, lo, freqs)`` of a sparse latent set shaped like ``groups``
    (each group's slices scaled by ``fraction``), tables fitted to the symbols' histogram."""
    rng = np.random.default_rng(seed)
    segments, desc = [], {}
    for g, (slices, rows) in groups.items():
        n = max(1, int(round(slices * fraction)))
        lat = np.clip(np.rint(rng.laplace(0.0, scale, size=(n, rows))), -8, 8).astype(np.int64)
        if rows > 1:
            lat[rng.random(n) < zero_fraction] = 0
        desc[g] = {"slices": n, "rows": rows, "latents": n * rows,
                   "zero_slices": float((~lat.any(axis=1)).mean()),
                   "zeros": float((lat == 0).mean())}
        for c in range(rows):
            col = np.ascontiguousarray(lat[:, c])
            lo, hi = int(col.min()), int(col.max())
            counts = np.bincount(col - lo, minlength=hi - lo + 1).astype(np.float64)
            freqs = _quantize_pmf(counts / counts.sum(), 1 << codec.TABLE_PRECISION)
            segments.append((col, lo, freqs))
    return segments, desc


def run_codec_speed(fraction: float, repeats: int, seed: int) -> dict:
    groups = resnet50_groups()
    segments, desc = synthetic_segments(groups, zero_fraction=0.8, scale=1.0, fraction=fraction,
                                        seed=seed)
    symbols = sum(len(s) for s, _, _ in segments)
    info_bits = sum(codec.information_bits(s, lo, f) for s, lo, f in segments)
    enc_wall, enc_cpu, words = timed(lambda: codec.encode(segments), repeats)
    layout = [(len(s), lo, f) for s, lo, f in segments]
    dec_wall, dec_cpu, cols = timed(lambda: codec.decode(words, layout), repeats)
    ok = all(np.array_equal(a, s) for a, (s, _, _) in zip(cols, segments, strict=True))
    if not ok:
        raise SystemExit("codec round trip FAILED")
    enc_s, dec_s = statistics.median(enc_wall), statistics.median(dec_wall)
    out = {"groups": desc, "symbols": symbols, "segments": len(segments),
           "payload_bytes": int(words.nbytes), "information_bytes": info_bits / 8,
           "efficiency": words.nbytes / (info_bits / 8), "round_trip_ok": ok,
           "encode_s": enc_wall, "encode_cpu_s": enc_cpu, "decode_s": dec_wall,
           "decode_cpu_s": dec_cpu, "encode_median_s": enc_s, "decode_median_s": dec_s,
           "encode_symbols_per_s": symbols / enc_s, "decode_symbols_per_s": symbols / dec_s}
    print(f"[b] codec {symbols / 1e6:.2f}M symbols: encode {enc_s:.3f} s "
          f"({symbols / enc_s / 1e6:.1f}M/s), decode {dec_s:.3f} s "
          f"({symbols / dec_s / 1e6:.1f}M/s)", flush=True)
    return out


def run_file_speed(tmp: Path, repeats: int, fit_steps: int, seed: int) -> tuple[dict, dict]:
    """Save/load of a converted tv:resnet50 with randomized sparse latents (priors fitted)."""
    spec = RunSpec(model="tv:resnet50", dataset="imagenet-shaped")
    spec.train.seed = seed
    c, s = 3, 224
    info = DataInfo("imagenet-shaped", c, s, s, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    empty = TensorDataset(torch.empty(0, c, s, s), torch.empty(0, dtype=torch.long))
    model = build(spec, DataSplits(empty, empty, empty, info, None))
    randomize_sparse(model, zero_fraction=0.8, scale=1.0, seed=seed)
    fit_priors(model, fit_steps, seed)
    path = tmp / "resnet50.lnx"
    latents = sum(layer.latent.numel() for _, layer in model.latent_layers())
    save_wall, save_cpu, size = timed(lambda: fileformat.save(model, path), repeats)
    load_wall, load_cpu, net = timed(lambda: fileformat.load(path), repeats)
    parse_wall, _, _ = timed(lambda: fileformat.read(path), repeats)
    enc_wall, _, _ = timed(lambda: fileformat.encode_model(model), repeats)
    # The loaded network must hold exactly the weights of the decoded model.
    ref = decode(model).state_dict()
    got = net.state_dict()
    exact = all(torch.equal(ref[k], got[k]) for k in ref if not k.endswith("num_batches_tracked"))
    res = {"model": "tv:resnet50", "latents": latents, "file_bytes": size,
           "save_s": save_wall, "save_cpu_s": save_cpu, "load_s": load_wall,
           "load_cpu_s": load_cpu, "save_median_s": statistics.median(save_wall),
           "load_median_s": statistics.median(load_wall),
           "encode_model_median_s": statistics.median(enc_wall),
           "read_median_s": statistics.median(parse_wall),
           "weights_exact": exact}
    print(f"[b] tv:resnet50 file {size / 1e6:.2f} MB: save {res['save_median_s']:.3f} s, "
          f"load {res['load_median_s']:.3f} s, exact={exact}", flush=True)
    row = efficiency_row("tv:resnet50", "random sparse latents, 80% zero 3x3/7x7 slices, "
                         "prior fitted", model, path)
    return res, row


# ----------------------------------------------------------------------------- report

def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def markdown(results: dict, command: str) -> str:
    m, st = results["machine"], results["settings"]
    eff = results["efficiency"]
    sp, fs = results["codec_speed"], results["file_speed"]
    worst = max(r["coding_efficiency"] for r in eff)
    lines = [
        "## Entropy coding: efficiency and speed (`lilnetx.fileformat.codec`, `.lnx` files)",
        "",
        machine_line(m) + f" Timings pinned to CPU {st['pinned_cpu']}.",
        f"Load average before / after the run: {st['loadavg_before']} / {st['loadavg_after']}"
        " (shared machine).",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
        "### Coding efficiency",
        "",
        "Files written by `lilnetx.fileformat.save`, read back by `lilnetx.fileformat.report.inspect`. "
        "Efficiency = latent payload bytes / (information content of the latents under the "
        "tables stored in the file / 8); 1.0 is the entropy bound for those tables. Overhead = "
        "every byte of the file except the latent payload (tables, decoders, BatchNorm/biases, "
        "architecture, index and header). Models built with `lilnetx.experiment.build` (seed "
        f"{st['seed']}), latents as initialized; sparse variants: {st['sparse_fraction']:.0%} of "
        "the latent slices of every layer set to zero, first with the untrained probability "
        f"models, then with the probability models fitted to the latents ({st['fit_steps']} Adam "
        "steps on the rate, as training would). Entropy = empirical entropy of the latents per "
        "group channel (the bound for any static per-channel table), for reference.",
        "",
        "| model | latents | file bytes | latent payload | information bytes | efficiency "
        "| entropy bytes | overhead bytes | overhead % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in eff:
        lines.append(
            f"| {r['case']} ({r['variant']}) | {r['latents']:,} | {r['file_bytes']:,} | "
            f"{r['payload_bytes']:,} | {r['information_bytes']:,.1f} | "
            f"{r['coding_efficiency']:.5f} | {r['entropy_bytes']:,.1f} | "
            f"{r['overhead_bytes']:,} | {r['overhead_pct']:.2f} |")
    lines += [
        "",
        "Overhead by part (bytes):",
        "",
        "| model | probability tables | decoders | biases and BatchNorm | architecture "
        "| index + header |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in eff:
        p = r["parts"]
        lines.append(f"| {r['case']} ({r['variant']}) | {p['probability tables']:,} | "
                     f"{p['decoders']:,} | {p['biases and BatchNorm']:,} | "
                     f"{p['architecture']:,} | {p['header']:,} |")
    lines += [
        "",
        f"Target efficiency <= {TARGET_EFFICIENCY}: {verdict(worst <= TARGET_EFFICIENCY)} "
        f"(worst {worst:.5f}).",
        "",
        "### Codec speed (one core)",
        "",
        f"`lilnetx.fileformat.codec.encode` / `decode` of a ResNet-50-sized latent set: "
        f"{sp['symbols']:,} integer latents in {sp['segments']} segments (one per group channel); "
        "3x3 and 7x7 rows with ~80% zero slices and rounded Laplace(0, 1) integers in [-8, 8] "
        "elsewhere, 1x1 and dense groups of the same small integers; tables fitted to the "
        "symbols. Process pinned to one CPU, torch and BLAS threads 1. "
        f"{st['repeats']} repeats, median wall time (process CPU time in brackets).",
        "",
        "| group | slices | rows | latents | zero slices | zero latents |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g, d in sp["groups"].items():
        lines.append(f"| {g} | {d['slices']:,} | {d['rows']} | {d['latents']:,} | "
                     f"{d['zero_slices']:.1%} | {d['zeros']:.1%} |")
    enc_cpu = statistics.median(sp["encode_cpu_s"])
    dec_cpu = statistics.median(sp["decode_cpu_s"])
    lines += [
        "",
        "| step | median s | (CPU s) | all runs s | symbols/s |",
        "|---|---:|---:|---|---:|",
        f"| encode | {sp['encode_median_s']:.3f} | ({enc_cpu:.3f}) | "
        f"{', '.join(f'{t:.3f}' for t in sp['encode_s'])} | "
        f"{sp['encode_symbols_per_s'] / 1e6:.1f}M |",
        f"| decode | {sp['decode_median_s']:.3f} | ({dec_cpu:.3f}) | "
        f"{', '.join(f'{t:.3f}' for t in sp['decode_s'])} | "
        f"{sp['decode_symbols_per_s'] / 1e6:.1f}M |",
        "",
        f"Stream: {sp['payload_bytes']:,} bytes, efficiency {sp['efficiency']:.5f}, round trip "
        f"{'exact' if sp['round_trip_ok'] else 'FAILED'}. Target encode and decode <= "
        f"{TARGET_SECONDS:.0f} s each: "
        f"{verdict(max(sp['encode_median_s'], sp['decode_median_s']) <= TARGET_SECONDS)}.",
        "",
        "### Whole file path: `fileformat.save` / `fileformat.load` of `tv:resnet50`",
        "",
        f"Converted `tv:resnet50` (1000 classes, 224x224), {fs['latents']:,} latents, randomized "
        "sparse latents as above (generated with torch, same distribution), probability models "
        "fitted to them as in the efficiency table, file "
        f"{fs['file_bytes']:,} bytes; same single core. `save` = decode the weights, fit the "
        "tables, encode, write; `load` = read, verify checksum, decode, rebuild the torchvision "
        "network, copy the weights.",
        "",
        "| path | median s | (CPU s) | all runs s |",
        "|---|---:|---:|---|",
        f"| `fileformat.save` | {fs['save_median_s']:.3f} | "
        f"({statistics.median(fs['save_cpu_s']):.3f}) | "
        f"{', '.join(f'{t:.3f}' for t in fs['save_s'])} |",
        f"| `fileformat.load` | {fs['load_median_s']:.3f} | "
        f"({statistics.median(fs['load_cpu_s']):.3f}) | "
        f"{', '.join(f'{t:.3f}' for t in fs['load_s'])} |",
        f"| of which `encode_model` (in memory) | {fs['encode_model_median_s']:.3f} | | |",
        f"| of which `read` (parse + CRC) | {fs['read_median_s']:.3f} | | |",
        "",
        f"Loaded weights identical to `lilnetx.decode(model)`: "
        f"{'yes' if fs['weights_exact'] else 'NO'}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1/10-size codec latent set, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3)")
    ap.add_argument("--sparse-fraction", type=float, default=0.9,
                    help="fraction of slices zeroed in the sparse efficiency variant")
    ap.add_argument("--fit-steps", type=int, default=None,
                    help="Adam steps fitting the priors of the sparse variant (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-file", action="store_true", help="skip the tv:resnet50 save/load")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown file whose `codec` section to (re)write")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    fraction = 0.1 if args.quick else 1.0
    fit_steps = args.fit_steps if args.fit_steps is not None else (30 if args.quick else 300)
    info = machine()  # before pinning, so it reports the machine's cores
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    cpu = pin_one_core()
    settings = {"repeats": repeats, "fraction": fraction, "seed": args.seed, "pinned_cpu": cpu,
                "fit_steps": fit_steps,
                "sparse_fraction": args.sparse_fraction, "loadavg_before": loadavg()}
    with tempfile.TemporaryDirectory(prefix="lnx-codec-bench-") as d:
        tmp = Path(d)
        eff = run_efficiency(tmp, args.sparse_fraction, fit_steps, args.seed)
        speed = run_codec_speed(fraction, repeats, args.seed)
        file_speed = None
        if not args.no_file:
            file_speed, row = run_file_speed(tmp, repeats, fit_steps, args.seed)
            eff.append(row)
    settings["loadavg_after"] = loadavg()
    results = {"machine": info, "settings": settings, "efficiency": eff,
               "codec_speed": speed, "file_speed": file_speed}
    for r in eff:
        print(f"{r['case']:12s} {r['variant']:40s} file {r['file_bytes']:>10,} B  payload "
              f"{r['payload_bytes']:>10,} B  eff {r['coding_efficiency']:.5f}  overhead "
              f"{r['overhead_bytes']:>8,} B ({r['overhead_pct']:.2f}%)")
    if args.json:
        print(json.dumps(results, indent=2, default=float))
    if args.out is not None:
        if file_speed is None:
            raise SystemExit("--out needs the tv:resnet50 file measurement (drop --no-file)")
        write_section(args.out, SECTION, markdown(results, command_line("benchmarks/codec.py",
                                                                         argv)))
        print(f"wrote the `{SECTION}` section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
