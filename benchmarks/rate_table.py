"""The tabulated training rate against the exact one: same training outcome, same gradients.

1. Seeded Fashion-MNIST LeNet-5 LilNetX runs (12 epochs, lr 0.02, prior lr 0.01, the
   decoder and lambda_rate given), side by side in processes, for seeds 0 .. ``--seeds`` - 1:
   one with the tabulated rate (``rate_table`` at its default, ``DEFAULT_POINTS``), one exact
   (``rate_table`` 0) and a control, the exact run again with the exact pass's chunk size
   halved (:data:`CONTROL_CHUNK`): the same computation with its sums in another order, so its
   distance from the exact run is what floating-point round-off alone changes in a seeded run.
   Test accuracy and file size of each (target, on seed 0: tabulated within 0.3 points and 2%
   of exact); over the seeds, the tabulated-minus-exact differences against the
   control-minus-exact ones (mean, 95% t-interval, signs), which tell a bias of the table from
   the noise of a chaotic training run. ``--results FILE`` keeps finished runs, so a later
   call with more seeds trains only the new ones.
2. On the trained priors and latents of the tabulated run, and on a ResNet-20 (width 4) at
   initialization, the tabulated rate against the exact one: relative error of the total bits
   and cosine similarity of the gradients to the latents and to every prior parameter (targets
   1e-4 and 0.9999).

    python benchmarks/rate_table.py --out docs/benchmarks.md      # about 2.5 minutes a seed on 2 cores
    python benchmarks/rate_table.py --quick                       # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, machine_line, write_section  # noqa: E402

from lilnetx.core.entropy import _CHUNK  # noqa: E402
from lilnetx.core.rate_table import DEFAULT_POINTS  # noqa: E402

BITS_RTOL, MIN_COSINE = 1e-4, 0.9999
ACC_POINTS, SIZE_FRACTION = 0.3, 0.02
CONTROL_CHUNK = 16384
"""Values per chunk of the exact rate pass in the control run (the library's is
``lilnetx.core.entropy._CHUNK``, 32,768): the
prior's gradients are summed over the chunks in another order, nothing else changes."""


def train(table: int, quick: bool, decoder: str, lam: float, threads: int = 1,
          seed: int = 0, chunk: int | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    # the exact pass's default chunk in this process: CONTROL_CHUNK for the control (a change
    # of summation order), the library's own otherwise (a pool's worker process runs several
    # trainings, so it is set for every one)
    from lilnetx.core import entropy

    defaults = list(entropy._bits_and_grads.__defaults__)
    defaults[-1] = chunk if chunk is not None else _CHUNK
    entropy._bits_and_grads.__defaults__ = tuple(defaults)
    from lilnetx import RunSpec, TrainConfig, run
    from lilnetx.experiment import finalize

    spec = RunSpec(model="lenet5", dataset="fashion_mnist", method="lilnetx",
                   limit=2000 if quick else None, options={"decoder": decoder},
                   train=TrainConfig(epochs=1 if quick else 12, lr=0.02, prior_lr=0.01,
                                     lambda_rate=lam, batch_size=128, seed=seed,
                                     rate_table=table))
    out = run(spec)
    with tempfile.TemporaryDirectory() as d:
        finalize(out, os.path.join(d, "m.lnx"), latency=False)
    state = None
    if table == DEFAULT_POINTS and seed == 0:  # the trained model the agreement rows use
        state = {k: v.detach().cpu() for k, v in out.model.state_dict().items()}
    return {"table": table, "threads": threads, "seed": seed, "chunk": chunk,
            "accuracy": out.summary["accuracy"],
            "size": out.summary["size_bytes"], "seconds": out.summary["train_seconds"],
            "state": state}


def agreement(prior, x) -> dict:
    """Relative error of the tabulated bits and gradient cosines against the exact path."""
    import torch
    import torch.nn.functional as F

    from lilnetx.core.rate_table import DEFAULT_POINTS, table_bits

    def cos(a, b):
        a, b = a.flatten().double(), b.flatten().double()
        return 1.0 if a.norm() == 0 and b.norm() == 0 else float(F.cosine_similarity(a, b, dim=0))

    res = []
    for tabulated in (False, True):
        xx = x.detach().clone().requires_grad_(True)
        prior.zero_grad()
        if tabulated:
            sp = [F.softplus(m) for m in prior.matrices]
            tf = [torch.tanh(f) for f in prior.factors]
            bits = table_bits(xx.t(), sp, list(prior.biases), tf, points=DEFAULT_POINTS)
        else:
            bits = prior.bits(xx)
        bits.backward()
        res.append((float(bits.detach()), xx.grad, [p.grad.clone() for p in prior.parameters()]))
    (b0, g0, p0), (b1, g1, p1) = res
    return {"values": x.numel(), "channels": x.shape[0], "bits": b0,
            "rel_error": abs(b1 - b0) / abs(b0), "cos_latents": cos(g0, g1),
            "cos_prior_min": min(cos(a, b) for a, b in zip(p0, p1, strict=True))}


def gradient_rows(state: dict | None, quick: bool, decoder: str) -> list[dict]:
    import torch

    import lilnetx

    rows = []
    torch.manual_seed(0)
    if state is not None:
        net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
        model = lilnetx.convert(net, decoder=decoder)
        model.load_state_dict(state)
        for group, layers in model.groups().items():
            lat = torch.cat([layer.latent.detach() for _, layer in layers], dim=0)
            noisy = (lat + torch.empty_like(lat).uniform_(-0.5, 0.5)).t()
            rows.append({"case": f"LeNet-5 trained, {group}", **agreement(model.priors[group],
                                                                            noisy)})
    width = 1.0 if quick else 4.0
    net = lilnetx.create_model("resnet20", in_channels=3, image_size=32, num_classes=10,
                               width=width)
    model = lilnetx.convert(net, width=width)
    for group, layers in model.groups().items():
        lat = torch.cat([layer.latent.detach() for _, layer in layers], dim=0)
        noisy = (lat + torch.empty_like(lat).uniform_(-0.5, 0.5)).t()
        rows.append({"case": f"ResNet-20 w{width:g} fresh, {group}",
                     **agreement(model.priors[group], noisy)})
    return rows


KINDS = {"table": "tabulated", "exact": "exact", "control": "exact, chunk halved (control)"}


def run_key(kind: str, seed: int) -> str:
    return f"{kind}:{seed}"


def interval(v: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of ``v`` (the interval is nan for fewer than 2 values)."""
    from scipy import stats

    m = statistics.mean(v)
    if len(v) < 2:
        return m, math.nan, math.nan
    h = stats.t.ppf(0.975, len(v) - 1) * statistics.stdev(v) / math.sqrt(len(v))
    return m, m - h, m + h


def differences(runs: dict, kind: str, seeds: list[int]) -> tuple[list[float], list[float]]:
    """Per seed, ``kind`` minus exact: accuracy in points and size in percent."""
    acc = [100 * (runs[run_key(kind, s)]["accuracy"] - runs[run_key("exact", s)]["accuracy"])
           for s in seeds]
    size = [100 * (runs[run_key(kind, s)]["size"] / runs[run_key("exact", s)]["size"] - 1)
            for s in seeds]
    return acc, size


def seed_lines(runs: dict, seeds: list[int]) -> list[str]:
    """Every seed's three runs, and the tabulated and control differences over the seeds."""
    lines = ["Every seed (the three runs of a seed draw the same noise):", "",
             "| seed | tabulated | exact | control | tabulated - exact | control - exact |",
             "|---:|---:|---:|---:|---:|---:|"]
    for sd in seeds:
        t, e, c = (runs[run_key(k, sd)] for k in ("table", "exact", "control"))
        lines.append(
            f"| {sd} | {100 * t['accuracy']:.2f}%, {t['size']:,} B | "
            f"{100 * e['accuracy']:.2f}%, {e['size']:,} B | "
            f"{100 * c['accuracy']:.2f}%, {c['size']:,} B | "
            f"{100 * (t['accuracy'] - e['accuracy']):+.2f} pts, "
            f"{100 * (t['size'] / e['size'] - 1):+.2f}% | "
            f"{100 * (c['accuracy'] - e['accuracy']):+.2f} pts, "
            f"{100 * (c['size'] / e['size'] - 1):+.2f}% |")
    if len(seeds) < 2:
        return lines + [""]

    def cell(v: list[float], unit: str) -> str:
        m, lo, hi = interval(v)
        pos = sum(x > 0 for x in v)
        return (f"{m:+.2f}{unit} [{lo:+.2f}, {hi:+.2f}], sd {statistics.stdev(v):.2f}, "
                f"{pos} of {len(v)} positive")

    ta, ts = differences(runs, "table", seeds)
    ca, cs = differences(runs, "control", seeds)
    sizes = sorted({int(k.split(":")[0][5:]) for k in runs if k[5:6].isdigit()})
    # per coarse table: its differences from exact, and from the control, seed by seed
    coarse = {}
    for c in sizes:
        if all(run_key(f"table{c}", sd) in runs for sd in seeds):
            xa, xs = differences(runs, f"table{c}", seeds)
            coarse[c] = (xa, xs, [t - k for t, k in zip(xa, ca, strict=True)],
                         [t - k for t, k in zip(xs, cs, strict=True)])

    def within(acc: list[float], size: list[float]) -> int:
        return sum(abs(a) <= ACC_POINTS and abs(z) <= 100 * SIZE_FRACTION
                   for a, z in zip(acc, size, strict=True))

    da = [t - c for t, c in zip(ta, ca, strict=True)]
    dz = [t - c for t, c in zip(ts, cs, strict=True)]
    lines += ["", f"Over {len(seeds)} seeds: mean difference, its 95% t-interval, the standard "
              "deviation of the differences and their signs:", "",
              "| | accuracy (points) | size (%) | seeds within 0.3 points and 2% |",
              "|---|---|---|---:|",
              f"| tabulated - exact | {cell(ta, '')} | {cell(ts, '')} | "
              f"{within(ta, ts)} of {len(seeds)} |",
              f"| control - exact (round-off alone) | {cell(ca, '')} | {cell(cs, '')} | "
              f"{within(ca, cs)} of {len(seeds)} |",
              f"| tabulated - control (seed by seed) | {cell(da, '')} | {cell(dz, '')} | |"]
    for c, (xa, xs, ya, ys) in coarse.items():
        lines += [f"| tabulated with {c:,} points - exact | {cell(xa, '')} | {cell(xs, '')} | "
                  f"{within(xa, xs)} of {len(seeds)} |",
                  f"| tabulated with {c:,} points - control | {cell(ya, '')} | "
                  f"{cell(ys, '')} | |"]
    lines.append("")
    ma, lo, hi = interval(da)
    verdict = ("contains 0: the tabulated runs do not differ from the exact ones beyond what "
               "round-off alone changes" if lo <= 0 <= hi else
               "excludes 0: the tabulated runs differ from the exact ones beyond round-off")
    lines += [f"The 95% interval of the accuracy difference between the tabulated and the "
              f"control runs ({ma:+.2f} points, [{lo:+.2f}, {hi:+.2f}]) {verdict}. The target "
              f"on one seeded run (within {ACC_POINTS} points and {100 * SIZE_FRACTION:g}%) is "
              f"tighter than that noise: the control, which changes nothing but an order of "
              f"summation, meets it on {within(ca, cs)} of {len(seeds)} seeds, the tabulated "
              f"rate on {within(ta, ts)}."]
    for c, (_, _, ya, _) in coarse.items():
        m = statistics.mean(ya)
        lines[-1] += (f" A bias from the interpolation error would grow with it (as the grid "
                      f"step squared): with {c:,} points instead of {DEFAULT_POINTS:,} the "
                      f"tabulated runs end {m:+.2f} points from the control on average.")
    lines.append("")
    return lines


def render(runs: dict, seeds: list[int], rows: list[dict], args, argv: list[str]) -> str:
    t, e, c = (runs[run_key(k, 0)] for k in ("table", "exact", "control"))
    dacc = 100 * (t["accuracy"] - e["accuracy"])
    dsize = t["size"] / e["size"] - 1
    cacc = 100 * (c["accuracy"] - e["accuracy"])
    csize = c["size"] / e["size"] - 1
    ok_train = abs(dacc) <= 100 * ACC_POINTS / 100 and abs(dsize) <= SIZE_FRACTION
    lines = [
        "## Tabulated training rate (`lilnetx.core.rate_table`)", "", machine_line(), "",
        f"Reproduce: `{command_line('benchmarks/rate_table.py', argv)}`", "",
        f"Fashion-MNIST LeNet-5, LilNetX, {'1 epoch on 2,000 images (quick)' if args.quick else '12 epochs'}, "
        f"lr 0.02, prior lr 0.01, lambda_rate {args.lambda_rate:g}, decoder {args.decoder}, "
        "batch 128, one thread each, the runs side by side in processes; seed 0:", "",
        "| rate | test accuracy | file size | training time |", "|---|---|---|---|",
        *(f"| {KINDS[k] if k != 'table' else f'tabulated ({DEFAULT_POINTS:,} points)'} | "
          f"{100 * r['accuracy']:.2f}% | {r['size']:,} B | {r['seconds']:.0f} s |"
          for k, r in (("table", t), ("exact", e), ("control", c))), "",
        f"Difference: {dacc:+.2f} points of accuracy, {100 * dsize:+.2f}% of size (targets: "
        f"within {ACC_POINTS} points and {100 * SIZE_FRACTION:g}%): "
        f"{'met' if ok_train else '**missed**'}. The runs draw the same noise, so they "
        "differ only by the rate's interpolation error and what it changes downstream.", "",
        f"Control: the exact run with the exact rate pass in chunks of {CONTROL_CHUNK:,} values "
        f"instead of {_CHUNK:,} (the same computation, the prior's gradients summed in another "
        f"order) ends {cacc:+.2f} points and {100 * csize:+.2f}% of size from the exact run: "
        "what round-off alone changes in a seeded run of this length.", "",
        *seed_lines(runs, seeds),
        "Tabulated against exact on the same noisy latents (a channel with fewer than "
        f"{2 * DEFAULT_POINTS:,} values is evaluated exactly in training; here the table is used "
        "for every group, to measure it):", "",
        "| group | channels | values | bits (exact) | relative error of bits | "
        "cosine, latent gradients | lowest cosine, prior parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['channels']} | {r['values']:,} | {r['bits']:,.0f} | "
                     f"{r['rel_error']:.1e} | {r['cos_latents']:.7f} | "
                     f"{r['cos_prior_min']:.7f} |")
    worst = max(r["rel_error"] for r in rows)
    cmin = min(min(r["cos_latents"], r["cos_prior_min"]) for r in rows)
    lines += ["", f"Worst: relative error {worst:.1e} (target <= {BITS_RTOL:g}), lowest cosine "
              f"{cmin:.7f} (target >= {MIN_COSINE}): "
              f"{'met' if worst <= BITS_RTOL and cmin >= MIN_COSINE else '**missed**'}.", ""]
    return "\n".join(lines)


def load_results(path: str | None, settings: dict) -> dict:
    """The runs kept in ``path`` (JSON) for these ``settings``, by :func:`run_key`."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    return data["runs"] if data.get("settings") == settings else {}


def save_results(path: str | None, settings: dict, runs: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"settings": settings, "runs": runs}, f, indent=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="markdown file whose section to replace")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--decoder", default="diagonal")
    p.add_argument("--lambda-rate", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds of the tabulated / exact / control runs (the target is judged "
                   "on seed 0)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at a time")
    p.add_argument("--coarse", type=int, nargs="*", default=[],
                   help="also train every seed with a coarser table of these many points (a "
                   "bias from the interpolation error grows as the step squared)")
    p.add_argument("--results", help="JSON file of finished runs: read, and kept up to date "
                   "(the trained state of seed 0 beside it, FILE.pt)")
    args = p.parse_args(argv)
    import torch

    settings = {"quick": args.quick, "decoder": args.decoder, "lambda_rate": args.lambda_rate,
                "points": DEFAULT_POINTS}
    runs = load_results(args.results, settings)
    state_path = args.results + ".pt" if args.results else None
    state = (torch.load(state_path, weights_only=True)
             if state_path and os.path.exists(state_path) and run_key("table", 0) in runs
             else None)
    if state is None:
        runs.pop(run_key("table", 0), None)  # its trained state is needed below
    seeds = list(range(args.seeds))
    jobs = {run_key(k, sd): (DEFAULT_POINTS if k == "table" else 0, sd,
                             CONTROL_CHUNK if k == "control" else None)
            for sd in seeds for k in KINDS if run_key(k, sd) not in runs}
    jobs.update({run_key(f"table{c}", sd): (c, sd, None) for c in args.coarse for sd in seeds
                 if run_key(f"table{c}", sd) not in runs})
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {k: pool.submit(train, t, args.quick, args.decoder, args.lambda_rate, 1, sd, ch)
                   for k, (t, sd, ch) in jobs.items()}
        for k, f in futures.items():
            r = f.result()
            trained = r.pop("state")
            if trained is not None:  # seed 0's tabulated run
                state = trained
                if state_path:
                    torch.save(state, state_path)
            runs[k] = r
            print(f"{k}: acc {r['accuracy']:.4f} size {r['size']} {r['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            save_results(args.results, settings, runs)
    rows = gradient_rows(state, args.quick, args.decoder)
    body = render(runs, seeds, rows, args, sys.argv[1:] if argv is None else argv)
    if args.out:
        write_section(args.out, "rate_table", body)
    print(body)


if __name__ == "__main__":
    main()
