"""The Pareto explorer on a big experiment: reading 1,000 runs from MLflow and building the figures.

1,000 synthetic trial runs (two methods, ``lilnetx`` and ``quant``, with the metrics, parameters,
per-epoch curves and tags a real sweep writes: ``lilnetx.role=trial``, ``lilnetx.sweep``,
``lilnetx.method``, ``lilnetx.trial``, ``mlflow.parentRunId``; ~3% FAILED with an error tag and
no final metrics) and their sweep parent run (``lilnetx.role=sweep``, ``lilnetx.objectives``)
are logged with ``MlflowClient.log_batch`` to a real MLflow sqlite store in a temporary
directory. Then, each repeated (median of 5, first call reported apart):

- ``dashboards.data.load_experiment`` (what every live refresh does first);
- the figures of one refresh: ``pareto_figure`` (accuracy vs size, coloured by ``lambda_rate``),
  ``parallel_figure``, ``hypervolume_figure`` and the 3-D ``pareto_figure`` (z = latency);
- the page's whole ``refresh`` callback (load, filter, figures) and the JSON Dash sends.

Target: the figures build in at most 2 s.

    python benchmarks/dashboard_figures.py                 # writes the `dashboard` section
    python benchmarks/dashboard_figures.py --no-write      # tables on stdout only
    python benchmarks/dashboard_figures.py --runs 200      # a smaller experiment
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import command_line, machine_line, publish  # noqa: E402

SECTION = "dashboard"
TARGET_SECONDS = 2.0
EXPERIMENT = "bench-dashboard"
SWEEP = "bench-20260101-000000-abcdef"
OBJECTIVES = {"accuracy": "max", "size_bytes": "min"}
DENSE_BYTES = 85544
DENSE_FLOPS = 66600
ROOT = Path(__file__).resolve().parents[1]


def synthetic_run(i: int, rng: random.Random) -> tuple[str, dict, dict, dict, bool]:
    """(method, params, final metrics, per-epoch curves, failed) of trial ``i``: the LilNetX
    tradeoff (a higher rate penalty gives a smaller file and, past a point, lower accuracy)."""
    method = "lilnetx" if i % 2 == 0 else "quant"
    epochs = 3
    if method == "lilnetx":
        lam_rate = 10 ** rng.uniform(-4, 1)
        lam_sp = 10 ** rng.uniform(-6, -2)
        params = {"lambda_rate": lam_rate, "lambda_sparsity": lam_sp, "lambda_l2": 1e-6,
                  "lr": rng.choice([0.01, 0.02]), "epochs": epochs, "batch_size": 128,
                  "seed": 0, "model": "lenet5", "dataset": "fashion_mnist", "method": method}
        squeeze = 4 + 60 * (math.log10(lam_rate) + 4) / 5 * rng.uniform(0.8, 1.2)
        slice_sp = min(0.95, 0.5 * (math.log10(lam_sp) + 6) / 4 * rng.uniform(0.5, 1.5))
    else:
        bits = rng.choice([2, 3, 4, 6, 8])
        params = {"bits": bits, "lr": rng.choice([0.01, 0.02]), "epochs": epochs,
                  "batch_size": 128, "seed": 0, "model": "lenet5", "dataset": "fashion_mnist",
                  "method": method}
        squeeze = 32 / bits * rng.uniform(0.9, 1.1)
        slice_sp = rng.uniform(0, 0.05)
    size = DENSE_BYTES / squeeze
    acc = max(0.1, 0.91 - 0.004 * squeeze ** 1.1 * rng.uniform(0.5, 1.5) - 0.05 * slice_sp)
    flops = DENSE_FLOPS * (1 - 0.6 * slice_sp)
    metrics = {
        "accuracy": acc, "val_accuracy": acc + rng.gauss(0, 0.01), "size_bytes": round(size),
        "dense_bytes": DENSE_BYTES, "compression_ratio": DENSE_BYTES / round(size),
        "bits_estimate": size * 8 * 0.97, "weight_sparsity": slice_sp * 1.05,
        "slice_sparsity": slice_sp, "channel_sparsity": slice_sp * 0.3, "flops": round(flops),
        "dense_flops": DENSE_FLOPS, "sparse_flops": round(flops * 0.9), "params": 21386,
        "latency_ms": 0.16 * (1 - 0.4 * slice_sp) * rng.uniform(0.9, 1.3),
        "latency_ms_b64": 0.7 * (1 - 0.4 * slice_sp) * rng.uniform(0.9, 1.3),
        "elapsed_seconds": rng.uniform(20, 60)}
    curves = {"val_accuracy": [acc * (0.7 + 0.1 * e) for e in range(1, epochs + 1)],
              "train_accuracy": [acc * (0.68 + 0.1 * e) for e in range(1, epochs + 1)],
              "train_loss": [1.5 / e for e in range(1, epochs + 1)],
              "bits_estimate": [size * 8 * (1.6 - 0.2 * e) for e in range(1, epochs + 1)]}
    return method, params, metrics, curves, rng.random() < 0.03


def populate(uri: str, n: int, seed: int = 0) -> dict:
    """Log the parent and ``n`` trial runs; returns counts and the seconds it took."""
    from mlflow.entities import Metric, Param, RunTag

    from explorer import tracking

    t0 = time.perf_counter()
    c = tracking.client(uri)
    exp_id = tracking.ensure_experiment(uri, EXPERIMENT)
    start = int(time.time() * 1000) - n * 30_000
    parent = c.create_run(exp_id, run_name=SWEEP, start_time=start, tags={
        tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: SWEEP, "lilnetx.space": "bench",
        tracking.TAG_METHOD: "lilnetx", tracking.TAG_OBJECTIVES: json.dumps(OBJECTIVES)})
    c.log_batch(parent.info.run_id, params=[Param("model", "lenet5"),
                                            Param("sampler", "tpe")])
    rng = random.Random(seed)
    failed = 0
    for i in range(n):
        method, params, metrics, curves, fail = synthetic_run(i, rng)
        t = start + 1000 + i * 30_000
        tags = {tracking.TAG_PARENT: parent.info.run_id, tracking.TAG_SWEEP: SWEEP,
                tracking.TAG_METHOD: method, tracking.TAG_ROLE: "trial",
                tracking.TAG_TRIAL: str(i), "lilnetx.core.model": "lenet5",
                "lilnetx.dataset": "fashion_mnist"}
        run = c.create_run(exp_id, run_name=f"{SWEEP}-t{i:03d}", start_time=t, tags=tags)
        ms = [Metric(k, float(v), t + 1000 * e, e) for k, vs in curves.items()
              for e, v in enumerate(vs, 1)]
        extra = []
        if fail:
            failed += 1
            ms = ms[:1]
            extra = [RunTag(tracking.TAG_ERROR, "TrainingDiverged: loss is nan at epoch 1")]
        else:
            ms += [Metric(k, float(v), t + 60_000, 0) for k, v in metrics.items()]
        c.log_batch(run.info.run_id, metrics=ms,
                    params=[Param(k, str(v)) for k, v in params.items()], tags=extra)
        c.set_terminated(run.info.run_id, "FAILED" if fail else "FINISHED",
                         end_time=t + 60_000)
    c.set_terminated(parent.info.run_id, "FINISHED")
    return {"runs": n, "failed": failed, "seconds": time.perf_counter() - t0}


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call, median of the next ``repeats`` calls) in seconds, and the last result."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times), out


def figure_builders(exp) -> dict:
    """The figures one refresh of the page builds, as the refresh callback calls them."""
    from dashboards import figures
    from dashboards.data import objectives_of

    runs = exp.runs
    objectives = objectives_of(exp, None)
    params = sorted({k for r in runs for k, v in r.params.items()
                     if isinstance(v, int | float) and len({q.params.get(k) for q in runs}) > 1})
    return {
        "pareto_figure (accuracy vs size, colour lambda_rate)":
            lambda: figures.pareto_figure(runs, "size_bytes", "accuracy", color="lambda_rate"),
        "parallel_figure": lambda: figures.parallel_figure(runs, params, list(objectives)),
        "hypervolume_figure": lambda: figures.hypervolume_figure(runs, objectives),
        "pareto_figure 3-D (z = latency)":
            lambda: figures.pareto_figure(runs, "size_bytes", "accuracy", z="latency_ms"),
    }


def profile(fn, top: int = 12) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue()


def share_in(fn, path_part: str, name: str) -> tuple[float, float]:
    """(seconds of one profiled call of ``fn``, of which inside function ``name`` of a file whose
    path contains ``path_part``), cumulative."""
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    fn()
    pr.disable()
    total = time.perf_counter() - t
    inside = max((v[3] for (file, _, func), v in pstats.Stats(pr).stats.items()
                  if func == name and path_part in file), default=0.0)
    return total, inside


def run(n: int, repeats: int, keep: str | None) -> dict:
    tmp = keep or tempfile.mkdtemp(prefix="lilnetx-bench-dash-")
    try:
        return _run(n, repeats, tmp)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(n: int, repeats: int, tmp: str) -> dict:
    from dashboards.app import create_app
    from dashboards.data import load_experiment

    os.makedirs(tmp, exist_ok=True)
    uri = f"sqlite:///{Path(tmp).resolve() / 'mlflow.db'}"
    pop = populate(uri, n)
    res: dict = {"populate": pop, "uri": uri, "load_avg": [os.getloadavg()[0]]}
    first, med, exp = timed(lambda: load_experiment(uri, EXPERIMENT), repeats)
    res["load"] = {"first": first, "median": med, "runs": len(exp.runs)}
    res["load_profile"] = share_in(lambda: load_experiment(uri, EXPERIMENT),
                                   os.path.join("mlflow", "tracking", "client.py"), "search_runs")
    builders = figure_builders(exp)
    res["figures"] = {}
    for name, fn in builders.items():
        f, m, fig = timed(fn, repeats)
        res["figures"][name] = {"first": f, "median": m, "traces": len(fig.data)}

    def all_figures():
        return [fn() for fn in builders.values()]

    f, m, _ = timed(all_figures, repeats)
    res["all_figures"] = {"first": f, "median": m}

    def page_refresh():
        # a new page of a new app (its figure cache empty): the Pareto view, then the figures
        # `rendered` triggers
        app = create_app(uri, EXPERIMENT)
        fns = {v["callback"].__wrapped__.__name__: v["callback"].__wrapped__
               for v in app.callback_map.values()}
        refresh, overview = fns["refresh"], fns["overview"]
        out = refresh(1, EXPERIMENT, "all", ["lilnetx", "quant"], "size_bytes", "accuracy",
                      "lambda_rate", "", None,
                      [{"label": m, "value": m} for m in ("lilnetx", "quant")])
        over = overview(out[-1], None)
        return out, sum(len(o.to_json()) for o in (out[0], over[0], over[1]))

    f, m, (out, nbytes) = timed(page_refresh, repeats)
    res["refresh"] = {"first": f, "median": m, "json_bytes": nbytes, "summary": out[2]}
    res["load_avg"].append(os.getloadavg()[0])
    res["met"] = res["all_figures"]["median"] <= TARGET_SECONDS
    res["profile"] = profile(all_figures) if not res["met"] else ""
    res["top_figure"] = max(res["figures"], key=lambda k: res["figures"][k]["median"])
    return res


def markdown(res: dict, n: int, repeats: int, argv: list[str]) -> str:
    pop, load, figs = res["populate"], res["load"], res["figures"]
    allf, ref = res["all_figures"], res["refresh"]
    lines = [
        "## Dashboard: 1,000-run experiment" if n == 1000 else f"## Dashboard: {n}-run experiment",
        "",
        f"{n} synthetic trial runs ({pop['failed']} FAILED), two methods, one sweep parent, "
        f"logged to a real MLflow sqlite store with `log_batch` (took {pop['seconds']:.1f} s). "
        f"Times in seconds: the first call, then the median of {repeats} more calls. "
        f"Target: the figures of one refresh build in at most {TARGET_SECONDS:g} s. "
        "Each row is timed on its own; on a shared machine the rows need not add up to the "
        "**all four figures** row, which times the four together.",
        "",
        "| step | first | median |",
        "|---|---:|---:|",
        f"| `load_experiment` ({load['runs']} runs) | {load['first']:.3f} | "
        f"{load['median']:.3f} |",
    ]
    for name, v in figs.items():
        lines.append(f"| {name} | {v['first']:.3f} | {v['median']:.3f} |")
    lines += [
        f"| **all four figures** | {allf['first']:.3f} | **{allf['median']:.3f}** |",
        f"| page `refresh` callback (load + figures; {ref['json_bytes'] / 1e6:.2f} MB of figure "
        f"JSON) | {ref['first']:.3f} | {ref['median']:.3f} |",
        "",
    ]
    total, inside = res["load_profile"]
    bigger = "reading the runs" if load["median"] > allf["median"] else "building the figures"
    lines += [f"Where a refresh goes: mostly {bigger} (median `load_experiment` "
              f"{load['median']:.2f} s, four figures {allf['median']:.2f} s). Under cProfile "
              f"(which inflates the call to {total:.2f} s), {inside / total:.0%} of "
              "`load_experiment` is inside MLflow's `MlflowClient.search_runs`, i.e. the "
              "SQLAlchemy store building an object for every metric, parameter and tag row; the "
              "dashboard's own code is the rest. One whole refresh callback takes "
              f"{ref['median'] / 5:.0%} of the page's 5 s refresh interval.", ""]
    if res["met"]:
        lines.append(f"Target met: the four figures take {allf['median']:.2f} s "
                     f"(<= {TARGET_SECONDS:g} s); the slowest is {res['top_figure']} "
                     f"({figs[res['top_figure']]['median']:.3f} s).")
    else:
        lines += [f"**Target missed**: the four figures take {allf['median']:.2f} s "
                  f"(> {TARGET_SECONDS:g} s); the slowest is {res['top_figure']}. "
                  "Profile of one build (cumulative):", "", "```",
                  res["profile"].strip()[:4000], "```"]
    la = res["load_avg"]
    lines += ["", machine_line() + f" 1-minute load average {la[0]:.1f} before and {la[1]:.1f} "
              "after the timings (the machine is shared).", "",
              f"Reproduce: `{command_line('benchmarks/dashboard_figures.py', argv)}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--keep", default=None, help="log into this directory and keep it")
    args = ap.parse_args(argv)
    res = run(args.runs, args.repeats, args.keep)
    publish(markdown(res, args.runs, args.repeats, argv), args.out, SECTION,
            write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
