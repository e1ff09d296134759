"""One real sweep shared by tests/test_dashboard.py and tests/test_browser.py.

Ray, Optuna and MLflow on sqlite, digits / LeNet-5 / 1 epoch: a 4-trial TPE sweep (max
concurrent 2) and, in the same experiment, a 1-trial grid sweep whose only trial diverges
(lr 1e30) and is recorded FAILED. Built at most once per test process (both test modules ask
for it through :func:`get_sweep`); Ray is started for it and shut down right after.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENT = "dash"
SPACE = """
name: {name}
model: lenet5
dataset: digits
train: {{epochs: 1, batch_size: 128, seed: 0}}
objectives: {{accuracy: max, size_bytes: min}}
search: {{sampler: {sampler}, num_samples: {n}, max_concurrent: 2, cpus_per_trial: 1, seed: 0}}
params:
{params}
"""
LAMBDAS = ("  lambda_rate: {loguniform: [1.0e-4, 1.0]}\n"
           "  lambda_sparsity: {loguniform: [1.0e-6, 1.0e-2]}")
DIVERGES = "  lr: {choice: [1.0e+30]}\n  lambda_rate: 1.0e-4"


@dataclass
class Sweep:
    root: Path
    uri: str
    experiment: str
    sweep: str
    failed_sweep: str
    finished: list = field(default_factory=list)
    """MLflow runs of the finished trials."""
    failed: list = field(default_factory=list)
    """MLflow runs of the failed trials."""
    seconds: float = 0.0


_CACHE: dict[str, Sweep] = {}


def _write(path: Path, name: str, n: int, sampler: str, params: str) -> str:
    path.write_text(SPACE.format(name=name, n=n, sampler=sampler, params=params))
    return str(path)


def get_sweep(root: Path) -> Sweep:
    """The shared sweep, built under ``root`` on the first call of this process."""
    if "sweep" in _CACHE:
        return _CACHE["sweep"]
    import ray

    from explorer import tracking
    from explorer.space import load_space
    from explorer.sweep import SweepFailed, SweepOptions, init_ray, run_sweep

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    started = not ray.is_initialized()
    t0 = time.time()
    os.chdir(root)  # Ray's results and the gate directory stay in the temporary folder
    try:
        if started:
            init_ray(None, num_cpus=2)
        opts = SweepOptions(tracking_uri=uri, experiment=EXPERIMENT, live=False)
        ok = run_sweep(load_space(_write(root / "ok.yaml", "ok", 4, "tpe", LAMBDAS)), opts)
        try:  # its only trial diverges: the sweep fails as a whole
            bad = run_sweep(load_space(_write(root / "bad.yaml", "bad", 1, "grid", DIVERGES)),
                            opts)
            raise AssertionError("a sweep whose every trial failed must raise SweepFailed")
        except SweepFailed as e:
            bad = e.result
    finally:
        if started:
            ray.shutdown()
        os.chdir(cwd)
    exp = tracking.client(uri).get_experiment_by_name(EXPERIMENT)
    runs = tracking.child_runs(uri, exp.experiment_id)
    sw = Sweep(root=root, uri=uri, experiment=EXPERIMENT, sweep=ok.sweep,
               failed_sweep=bad.sweep,
               finished=[r for r in runs if r.info.status == "FINISHED"],
               failed=[r for r in runs if r.info.status == "FAILED"],
               seconds=time.time() - t0)
    assert len(sw.finished) == 4 and len(sw.failed) == 1, [r.info.status for r in runs]
    _CACHE["sweep"] = sw
    return sw
