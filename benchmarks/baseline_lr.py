"""Baseline defaults: accuracy of dense, quant and imp against learning rate at small budgets.

Trains LeNet-5 on scikit-learn's digits (bundled, no download) with ``lilnetx.run`` for each
method, learning rate and epoch budget, seeds 0-2, and reports the median test accuracy over the
seeds (with the lowest and highest) of the network each method stores (after quantization, after
pruning). Methods: ``dense``, ``quant`` at 8 and 4 bits, and ``imp`` at 90% sparsity with its
current defaults (phases, retraining epochs per phase, schedule, read from the class) and with
the former ones (3 phases of 1 retraining epoch, SLR). The row at each method's ``default_lr``
is marked **default**. For imp, the budget is the dense training epochs; its retraining comes on
top (the options column gives the total).

One process per core (``--jobs``, default 2), each with one torch thread; about 5 minutes on 2
cores.

    python benchmarks/baseline_lr.py                           # the section on stdout
    python benchmarks/baseline_lr.py --out docs/benchmarks.md  # (re)write the `baseline` section
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _report import command_line, loadavg, machine_line, write_section  # noqa: E402

SECTION = "baseline"
TITLE = "Baseline defaults: learning rate at small budgets (digits, LeNet-5)"
LRS = (1e-3, 3e-3, 1e-2, 2e-2, 3e-2)
EPOCHS = (4, 15)
SEEDS = (0, 1, 2)
OLD_IMP = {"phases": 3, "retrain_epochs": 1, "schedule": "SLR"}
"""The imp defaults before issue 14 (with default_lr 1e-3 for every baseline)."""


def configs() -> list[tuple[str, str, dict]]:
    """(method, label, options) of every table block."""
    from lilnetx.methods import create_method

    imp = create_method("imp").options
    new = {k: imp[k] for k in ("phases", "retrain_epochs", "schedule")}
    rows = [("dense", "", {}), ("quant", "bits 8", {"bits": 8}), ("quant", "bits 4", {"bits": 4}),
            ("imp", "", {"target_sparsity": 0.9, **new})]
    if new != OLD_IMP:
        rows.append(("imp", "", {"target_sparsity": 0.9, **OLD_IMP}))
    return [(m, label or describe(opts), opts) for m, label, opts in rows]


def describe(opts: dict) -> str:
    if "phases" not in opts:
        return ""
    return (f"sparsity {opts['target_sparsity']:g}, {opts['phases']} x {opts['retrain_epochs']} "
            f"retraining epochs, {opts['schedule']}")


def one(job: tuple[str, dict, float, int, int]) -> float:
    """Test accuracy of one run (in a worker process with one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from lilnetx.experiment import RunSpec, run
    from lilnetx.train import TrainConfig

    method, opts, lr, epochs, seed = job
    spec = RunSpec(model="lenet5", dataset="digits", method=method, options=dict(opts),
                   train=TrainConfig(epochs=epochs, seed=seed, lr=lr))
    return float(run(spec).summary["accuracy"])


def measure(jobs: int, lrs=LRS, epochs=EPOCHS, seeds=SEEDS) -> list[dict]:
    from lilnetx.methods import create_method

    blocks = configs()
    grid = [(m, opts, lr, ep, s) for m, _, opts in blocks for lr in lrs for ep in epochs
            for s in seeds]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            accs = list(pool.map(one, grid, chunksize=4))
    else:
        accs = [one(j) for j in grid]
    by = dict(zip([(m, json.dumps(o, sort_keys=True), lr, ep, s) for m, o, lr, ep, s in grid],
                  accs, strict=True))
    rows = []
    for m, label, opts in blocks:
        key = json.dumps(opts, sort_keys=True)
        default = type(create_method(m)).default_lr
        current = all(create_method(m).options.get(k) == v for k, v in opts.items()
                      if k != "target_sparsity" and k != "bits")
        for lr in lrs:
            cells = {}
            for ep in epochs:
                vals = [by[(m, key, lr, ep, s)] for s in seeds]
                cells[ep] = {"median": statistics.median(vals), "min": min(vals),
                             "max": max(vals), "seeds": vals}
            rows.append({"method": m, "options": label, "lr": lr, "epochs": cells,
                         "default": current and abs(lr - default) <= 1e-12 * default,
                         "extra_epochs": opts.get("phases", 0) * opts.get("retrain_epochs", 0)})
    return rows


def table(rows: list[dict], epochs=EPOCHS) -> str:
    head = "| method | options | lr | " + " | ".join(f"{e} epochs" for e in epochs) + " |"
    lines = [head, "|" + "---|" * (3 + len(epochs))]
    for r in rows:
        opts = r["options"]
        if r["extra_epochs"]:
            opts += f" (+{r['extra_epochs']} epochs)"
        cells = [f"{c['median']:.3f} ({c['min']:.3f}-{c['max']:.3f})"
                 for c in (r["epochs"][e] for e in epochs)]
        if r["default"]:
            cells = [f"**{c}**" for c in cells]
        lr = f"{r['lr']:g}" + (" **default**" if r["default"] else "")
        lines.append(f"| {r['method']} | {opts or '-'} | {lr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(rows: list[dict], seconds: float, argv: list[str] | None) -> str:
    from lilnetx.methods import create_method

    defaults = ", ".join(f"{m} {type(create_method(m)).default_lr:g}"
                         for m in ("dense", "quant", "imp"))
    from lilnetx.data import create_dataset

    imp = create_method("imp").options
    n = len(create_dataset("digits", val_fraction=0.1, seed=0).train)
    return f"""## {TITLE}

{machine_line()} Load average before the run: {LOAD}. Wall time {seconds:.0f} s.

Reproduce: `{command_line("benchmarks/baseline_lr.py", argv)}`.

Test accuracy of the stored network (after quantization, after pruning), median over seeds
{", ".join(map(str, SEEDS))} with the lowest and highest in brackets; scikit-learn digits (8x8,
{n:,} training images: {-(-n // 256)} batches of 256 an epoch), LeNet-5, Adam with 10% warmup
then cosine. For imp the epochs are the dense training; pruning to 90% sparsity and retraining
come on top (+N epochs), each phase restarting at the lr.

Defaults now: lr {defaults}; imp {imp["phases"]} phases x {imp["retrain_epochs"]} retraining
epochs, {imp["schedule"]}. The last block is imp with its former defaults (3 x 1, SLR); the
former default lr of all three was 1e-3.

{table(rows)}
"""


LOAD = "n/a"


def main(argv: list[str] | None = None) -> int:
    global LOAD
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown file whose `baseline` section to (re)write")
    args = ap.parse_args(argv)
    LOAD = loadavg()
    start = time.perf_counter()
    rows = measure(max(1, args.jobs))
    text = section(rows, time.perf_counter() - start, argv)
    if args.out is not None:
        write_section(args.out, SECTION, text)
        print(f"wrote section `{SECTION}` of {args.out}", file=sys.stderr)
    print(text)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
