"""Sweep machinery: per-trial overhead, parallel speedup, and the default sampler against random
search, with real Ray, Optuna and MLflow (sqlite) in one process.

    python benchmarks/sweep_machinery.py --out docs/benchmarks.md          # all three
    python benchmarks/sweep_machinery.py --quick                           # a smoke run

1. Overhead: trials whose training is (almost) a no-op (MLP on digits, one example, one step),
   one at a time; per trial: MLflow run duration minus training time, and driver wall / trials.
2. Parallel: 8 equal trials (LeNet-5, digits, 3 epochs) with 2 concurrent against 1 concurrent,
   both in the same Ray session; ratio of wall times (target <= 0.6).
3. Samplers: the demo space with its TPE sampler against random search, same budget and seed;
   hypervolumes from one shared reference point.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, machine_line, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

NOOP = """
name: {name}
model: mlp
dataset: digits
train: {{epochs: 1, batch_size: 1, limit: 1, seed: 0}}
objectives: {{accuracy: max, size_bytes: min}}
search: {{sampler: random, num_samples: {n}, max_concurrent: {k}, seed: 0}}
params: {{lambda_rate: {{loguniform: [1.0e-4, 1.0]}}}}
"""
EQUAL = """
name: {name}
model: {model}
dataset: {dataset}
train: {{{train}, seed: 0}}
objectives: {{accuracy: max, size_bytes: min}}
search: {{sampler: random, num_samples: {n}, max_concurrent: {k}, seed: 0}}
params: {{lambda_rate: {{choice: [1.0e-3]}}}}
"""


def sweep(text_or_path: str, workdir: Path, experiment: str, sampler: str | None = None,
          num_samples: int | None = None, seed: int | None = None):
    from explorer.space import load_space, validate
    from explorer.sweep import SweepOptions, run_sweep

    if text_or_path.endswith(".yaml"):
        space = load_space(text_or_path)
    else:
        import yaml

        space = validate(yaml.safe_load(text_or_path))
        space.source = text_or_path
    if sampler:
        for entry in space.methods.values():
            entry["sampler"] = sampler
    if seed is not None:
        space.seed = seed
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    t0 = time.perf_counter()
    res = run_sweep(space, SweepOptions(tracking_uri=uri, experiment=experiment, live=False,
                                        num_samples=num_samples))
    return uri, res, time.perf_counter() - t0


def runs_of(uri: str, res):
    from explorer import tracking

    return tracking.child_runs(uri, res.experiment_id, res.sweep, status="FINISHED")


def overhead(workdir: Path, n: int) -> dict:
    uri, res, wall = sweep(NOOP.format(name="noop", n=n, k=1), workdir, "noop")
    runs = runs_of(uri, res)
    per = [(r.info.end_time - r.info.start_time) / 1000 - r.data.metrics["train_seconds"]
           for r in runs]
    return {"trials": len(runs), "median_overhead_s": statistics.median(per),
            "max_overhead_s": max(per), "driver_wall_per_trial_s": wall / max(len(runs), 1),
            "median_train_s": statistics.median(r.data.metrics["train_seconds"] for r in runs)}


PARALLEL_CASES = {
    "short": ("LeNet-5, digits, 3 epochs", "lenet5", "digits", "epochs: 3, batch_size: 64"),
    "training-bound": ("LeNet-5, Fashion-MNIST, 6,000 images, 2 epochs", "lenet5",
                       "fashion_mnist", "epochs: 2, batch_size: 128, limit: 6000"),
}


def parallel(workdir: Path, n: int, quick: bool) -> dict:
    """8 equal trials one at a time, then two at a time, per case: a short trial, where the
    fixed per-trial work (which includes the latency timing that holds the machine alone) weighs
    most, and a trial whose time goes to training."""
    out = {}
    for case, (label, model, data, train) in PARALLEL_CASES.items():
        if quick:
            train = "epochs: 1, batch_size: 64, limit: 500"
        spaces = {k: EQUAL.format(name=f"{k}-{case}", n=n, k=conc, model=model, dataset=data,
                                  train=train) for k, conc in (("seq", 1), ("par", 2))}
        _, res1, wall1 = sweep(spaces["seq"], workdir, f"seq-{case}")
        _, res2, wall2 = sweep(spaces["par"], workdir, f"par-{case}")
        out[case] = {"label": label, "trials": n, "sequential_s": wall1, "two_concurrent_s": wall2,
                     "ratio": wall2 / wall1, "finished": [res1.finished, res2.finished]}
    return out


def samplers(workdir: Path, n: int, seeds: list[int]) -> dict:
    """TPE (the demo space's sampler) against random search on the demo space, ``n`` trials
    each, once per search seed; hypervolumes from one reference point shared by every run."""
    from explorer.pareto import hypervolume, nondominated, reference_point

    demo = str(ROOT / "search_spaces" / "demo.yaml")
    runs: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for sampler in ("tpe", "random"):
            uri, res, wall = sweep(demo, workdir, f"demo-{sampler}-{seed}", sampler=sampler,
                                   num_samples=n, seed=seed)
            runs[sampler, seed] = {"points": [r.data.metrics for r in runs_of(uri, res)],
                                   "wall_s": wall}
    objectives = {"accuracy": "max", "size_bytes": "min"}
    ref = reference_point([p for r in runs.values() for p in r["points"]], objectives)
    rows = []
    for (sampler, seed), r in runs.items():
        pts = r["points"]
        front = [pts[i] for i in nondominated(pts, objectives)]
        rows.append({"sampler": sampler, "seed": seed, "finished": len(pts),
                     "wall_s": r["wall_s"], "front_size": len(front),
                     "hypervolume": hypervolume(front, objectives, ref)})
    return {"rows": rows, "reference": ref, "trials": n}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["overhead", "parallel", "samplers"], nargs="+",
                   default=None, help="run only these parts (the others are kept from --results)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="search seeds of the sampler comparison (default 0 1)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the MLflow store and studies here (default: a temporary folder)")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "sweep_machinery.json",
                   help="JSON of the measured results; with --only the other parts are kept "
                        "from it")
    args = p.parse_args(argv)
    import json

    from explorer.sweep import init_ray

    init_ray(None, num_cpus=2)
    results = {}
    if args.only and args.results.exists():
        results = json.loads(args.results.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)
        if args.only is None or "overhead" in args.only:
            results["overhead"] = overhead(work, 3 if args.quick else 8)
            print(results["overhead"], flush=True)
        if args.only is None or "parallel" in args.only:
            results["parallel"] = parallel(work, 4 if args.quick else 8, args.quick)
            print(results["parallel"], flush=True)
        if args.only is None or "samplers" in args.only:
            results["samplers"] = samplers(work, 4 if args.quick else 24, args.seeds)
            print(results["samplers"], flush=True)
    import ray

    ray.shutdown()
    if not args.quick:
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["## Sweep machinery (Ray Tune + Optuna + MLflow on sqlite)", "",
             machine_line(), "",
             "Reproduce: `python benchmarks/sweep_machinery.py --out docs/benchmarks.md` (all "
             "parts; `--only overhead parallel samplers` runs some of them and keeps the others' "
             "results from `docs/sweep_machinery.json`). Last run: "
             f"`{command_line('benchmarks/sweep_machinery.py', argv)}`.", ""]
    if "overhead" in results:
        o = results["overhead"]
        lines += [f"- **Overhead per trial** ({o['trials']} no-op trials: MLP on digits, one "
                  f"example, one step, one at a time): median {o['median_overhead_s']:.2f} s "
                  f"(max {o['max_overhead_s']:.2f} s) from the start of the trial's MLflow run to "
                  f"its end, training excluded (median training {o['median_train_s']:.3f} s); "
                  "this covers data loading, evaluation, the .lnx file, slim export, FLOPs, "
                  "latency under the gate, and MLflow logging. Driver wall per trial, Ray "
                  f"start-up and scheduling included: {o['driver_wall_per_trial_s']:.2f} s. "
                  "Target: at most 2 s."]
    if "parallel" in results:
        lines += ["- **Parallel trials** (8 equal trials, 1 CPU each, one at a time against two "
                  "at a time on 2 cores; target: ratio at most 0.6). Each trial times its model "
                  "while holding the machine alone (`explorer/gate.py`), so that part does not "
                  "overlap:"]
        for q in results["parallel"].values():
            lines.append(f"  - {q['label']}: {q['sequential_s']:.1f} s one at a time, "
                         f"{q['two_concurrent_s']:.1f} s two at a time, ratio "
                         f"**{q['ratio']:.2f}**.")
    if "samplers" in results:
        s = results["samplers"]
        mean = {k: statistics.mean(r["hypervolume"] for r in s["rows"] if r["sampler"] == k)
                for k in ("tpe", "random")}
        lines += [f"- **Default sampler against random search** on `search_spaces/demo.yaml`, "
                  f"{s['trials']} trials each, same search seeds; hypervolume of accuracy "
                  "(searched on the validation split) against file size, from the reference "
                  "point shared by every run ("
                  + ", ".join(f"{k} {v:.4g}" for k, v in s["reference"].items())
                  + f"): mean TPE **{mean['tpe']:.4g}**, random **{mean['random']:.4g}**.", "",
                  "| sampler | seed | finished | front size | hypervolume | wall s |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['sampler']} | {r['seed']} | {r['finished']} | {r['front_size']} | "
                  f"{r['hypervolume']:.4g} | {r['wall_s']:.0f} |" for r in s["rows"]]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_section(args.out if args.out.is_absolute() else ROOT / args.out, "sweep", text)


if __name__ == "__main__":
    main()
