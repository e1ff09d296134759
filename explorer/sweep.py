"""The sweep driver: Optuna searches (through Ray Tune's OptunaSearch), Ray Tune runs the
trials, MLflow records them. The study lives in durable Optuna storage under a fixed name, so
``--resume`` continues it after the driver dies, whatever happened to Ray's own state."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field

from lilnetx.errors import ConfigError

from . import tracking
from .pareto import hypervolume, nondominated, search_metric
from .space import SearchSpace


@dataclass
class SweepOptions:
    tracking_uri: str | None = None
    experiment: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    address: str | None = None
    resume: bool = False
    study_storage: str | None = None
    device: str | None = None
    live: bool = True


@dataclass
class SweepResult:
    sweep: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    finished: int
    failed: int
    front: list[dict] = field(default_factory=list)
    hypervolume: float = 0.0
    fronts: dict[str, dict] = field(default_factory=dict)
    studies: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def study_name(sweep: str, method: str) -> str:
    """One Optuna study per method of a sweep."""
    return f"{sweep}.{method}"


class SweepFailed(RuntimeError):
    """Every trial of the sweep failed (exit code 1); ``result`` holds the counts and
    ``errors`` the first trials' error messages."""

    def __init__(self, result: SweepResult, errors: list[str]):
        self.result, self.errors = result, errors
        first = f"; first error: {errors[0][:200]}" if errors else ""
        super().__init__(f"all {result.failed} trials of sweep {result.sweep} failed{first}")


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The sampler's seed for a study that already holds ``trials_so_far`` trials: the space's
    seed for a new study, a different one derived from it for a resumed study, so a resumed
    search continues rather than replays the random draws of the first run."""
    if trials_so_far == 0:
        return seed
    return (seed * 1_000_003 + trials_so_far * 7_919) % (2**31 - 1)


def make_sampler(space: SearchSpace, method: str, trials_so_far: int = 0):
    """The method's sampler from :mod:`explorer.samplers`, seeded by :func:`sampler_seed`."""
    from .samplers import create_sampler

    choices = {k: list(v["choice"]) for k, v in space.searched(method).items() if "choice" in v}
    return create_sampler(space.methods[method]["sampler"],
                          sampler_seed(space.seed, trials_so_far), choices)


class DefineByRun:
    """The Optuna define-by-run function: suggests the searched parameters and passes the trial
    number on, so a trial's MLflow run can be matched to its study trial. A class (not a
    closure) so Ray can pickle the searcher."""

    def __init__(self, searched: dict[str, dict]):
        self.searched = searched

    def __call__(self, trial) -> dict:
        for name, dist in self.searched.items():
            kind, args = next(iter(dist.items()))
            if kind == "uniform":
                trial.suggest_float(name, args[0], args[1])
            elif kind == "loguniform":
                trial.suggest_float(name, args[0], args[1], log=True)
            elif kind == "int":
                trial.suggest_int(name, args[0], args[1])
            else:
                trial.suggest_categorical(name, list(args))
        return {"optuna_trial": trial.number}


def study_storage(opts: SweepOptions, uri: str):
    """Optuna storage: ``--study-storage`` (an RDB URL or a journal file path), else a journal
    file beside the sqlite tracking database (or in the cwd)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    target = opts.study_storage
    if target and "://" in target:
        return RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
    if not target:
        base = (os.path.dirname(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///")
                else os.getcwd())
        target = os.path.join(base, "optuna-studies.journal")
    del optuna
    return JournalStorage(JournalFileBackend(os.path.abspath(target)))


def _reconcile(study, uri: str, experiment_id: str, sweep: str, objectives: dict,
               method: str) -> None:
    """After a driver died: tell the study about trials whose MLflow run finished, fail the
    rest of the RUNNING ones, and mark their MLflow runs KILLED."""
    from optuna.trial import TrialState

    runs = {r.data.tags.get(tracking.TAG_TRIAL): r
            for r in tracking.child_runs(uri, experiment_id, sweep)
            if r.data.tags.get(tracking.TAG_METHOD) == method}
    c = tracking.client(uri)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        run = runs.get(str(t.number))
        m = run.data.metrics if run is not None else {}
        vals = [m.get(search_metric(o)) for o in objectives]
        if run is not None and run.info.status == "FINISHED" and all(
                v is not None and math.isfinite(v) for v in vals):
            study.tell(t.number, vals, state=TrialState.COMPLETE)
            continue
        study.tell(t.number, state=TrialState.FAIL)
        if run is not None and run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, tracking.TAG_ERROR, "driver stopped before the trial ended")
            c.set_terminated(run.info.run_id, "KILLED")
    for run in runs.values():  # trial runs with no study trial left RUNNING (driver died early)
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, "KILLED")


def fronts(uri: str, experiment_id: str, sweep: str, objectives: dict) -> dict:
    """The sweep's fronts from MLflow's finished runs: ``front`` and ``hypervolume`` over all
    methods, and ``methods``: per method its own front and hypervolume, every hypervolume
    measured from one reference point shared by all methods.

    Beside each linear hypervolume, ``log_hypervolume``: the same with the ``log_objectives``
    (bytes, ms, MACs, bits, ratios) on a log10 axis, from ``log_reference`` (transformed values,
    shared by all methods); runs with such a value <= 0 are left out of it only, and counted
    in ``log_excluded``."""
    from .pareto import (
        log_hypervolume,
        log_objectives,
        log_reference_point,
        reference_point,
        to_log,
    )
    from .runs import cache_for

    cache = cache_for(uri, experiment_id)  # the loader the dashboard uses (one full read here)
    cache.refresh()
    runs = [r for r in cache.records() if r.sweep == sweep and r.status == "FINISHED"
            and all(search_metric(o) in r.metrics for o in objectives)]
    ref = reference_point([r.metrics for r in runs], objectives) if runs else None
    log_pts, log_excluded = to_log([r.metrics for r in runs], objectives)
    log_ref = log_reference_point(log_pts, objectives) if log_pts else None

    def front_of(rs):
        points = [r.metrics for r in rs]
        idx = nondominated(points, objectives)
        rows = [{"run_id": rs[i].run_id, "run_name": rs[i].name, "method": rs[i].method,
                 "params": dict(rs[i].params), "metrics": dict(rs[i].metrics)}
                for i in idx]
        rows.sort(key=lambda r: [r["metrics"][search_metric(o)] * (-1 if d == "max" else 1)
                                 for o, d in objectives.items()])
        hv = hypervolume([points[i] for i in idx], objectives, ref) if idx else 0.0
        # all points, not only the linear front: a front point left out (<= 0) may uncover others
        lhv = log_hypervolume(points, objectives, log_ref) if log_ref else 0.0
        return rows, hv, lhv

    front, hv, lhv = front_of(runs)
    per = {}
    for m in sorted({r.method for r in runs}):
        mine = [r for r in runs if r.method == m]
        rows, mhv, mlhv = front_of(mine)
        per[m] = {"front": rows, "hypervolume": mhv, "finished": len(mine),
                  "log_hypervolume": mlhv, "log_reference": log_ref,
                  "log_excluded": to_log([r.metrics for r in mine], objectives)[1]}
    return {"front": front, "hypervolume": hv, "methods": per, "reference": ref,
            "log_hypervolume": lhv, "log_reference": log_ref,
            "log_objectives": log_objectives(objectives), "log_excluded": log_excluded}


def check_ray_address(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`ConfigError` quickly when a Ray cluster address does not answer."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.replace("ray://", "").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(f"Ray cluster at {address!r} is unreachable: {e}") from None


def use_factory_code(space: SearchSpace) -> None:
    """A space naming a factory (``{factory: "module:function"}``) imports it from the YAML's
    folder: put that folder on this process's path and on ``PYTHONPATH``, which a local Ray's
    workers inherit. (On a cluster, install the code on the workers or ship it with a Ray
    runtime environment.)"""
    import sys

    if not space.code_dir or not any(isinstance(x, dict) for x in (space.model, space.dataset)):
        return
    if space.code_dir not in sys.path:
        sys.path.insert(0, space.code_dir)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if space.code_dir not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([space.code_dir, *parts])


def local_ray_on_loopback() -> None:
    """Make a local Ray node bind and advertise 127.0.0.1 only: without this its GCS, raylet,
    workers and agents listen on every interface. Ray reads the variable when it is imported,
    so the already imported constant is set as well."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at ``address``, or start a local Ray on loopback (``num_cpus``:
    what it offers, default all cores). Ray's token authentication stays as Ray sets it."""
    if not address:
        local_ray_on_loopback()
    import ray

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)


def _check_on_cluster(space: SearchSpace) -> None:
    """On a cluster the data lives on the workers: check resources against its nodes, then
    load the data and build the model in a task on a worker."""
    import ray

    from . import preflight

    preflight.check_resources(space, *preflight.cluster_resources(), "the Ray cluster")
    task = ray.remote(num_cpus=0)(preflight.check_data_and_model)
    ray.get(task.remote(space))


def run_sweep(space: SearchSpace, opts: SweepOptions) -> SweepResult:
    """Run (or resume) the sweep of ``space``; returns the front from MLflow's finished runs.

    Raises :class:`ConfigError` before anything starts when the space cannot work here (see
    :mod:`explorer.preflight`), :class:`SweepFailed` when every trial failed, and
    ``KeyboardInterrupt`` after settling the runs (parent and running trials KILLED)."""
    from lilnetx.factory import describe

    from . import preflight

    start = time.time()
    # With a tracking server MLflow prints "View run ... at: URL" on stdout whenever a run ends;
    # stdout is reserved for results (--json).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # command-line options win over the space's `cluster:` section
    opts.address = opts.address or space.cluster.get("address")
    opts.study_storage = opts.study_storage or space.cluster.get("study_storage")
    uri = tracking.resolve_tracking_uri(opts.tracking_uri or space.cluster.get("tracking_uri"))
    tracking.check_server(uri)
    if opts.address:
        check_ray_address(opts.address)
    experiment = opts.experiment or space.name
    use_factory_code(space)
    preflight.check_storage(uri, experiment)
    preflight.check_space(space, cluster=bool(opts.address))
    if opts.address:
        init_ray(opts.address)
        _check_on_cluster(space)
    max_concurrent = opts.max_concurrent or space.max_concurrent
    exp_id = tracking.ensure_experiment(uri, experiment)
    c = tracking.client(uri)
    parent = tracking.find_parent(uri, exp_id, space.name) if opts.resume else None
    if opts.resume and parent is None:
        raise ConfigError(f"nothing to resume: no sweep of {space.name!r} in experiment "
                          f"{experiment!r}")
    if parent is None:
        sweep = f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        parent = c.create_run(exp_id, run_name=sweep, tags={
            tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: sweep, "lilnetx.space": space.name,
            tracking.TAG_METHOD: ",".join(space.methods),
            tracking.TAG_OBJECTIVES: json.dumps(space.objectives)})
        tracking.log_params(uri, parent.info.run_id, {
            "model": describe(space.model), "dataset": describe(space.dataset),
            "sampler": space.sampler,
            "methods": ",".join(space.methods), "max_concurrent": max_concurrent,
            **{f"num_samples.{m}": opts.num_samples or e["num_samples"]
               for m, e in space.methods.items()}})
        c.log_text(parent.info.run_id, space.source, "search_space.yaml")
    else:
        sweep = parent.data.tags[tracking.TAG_SWEEP]
        c.update_run(parent.info.run_id, status="RUNNING")
    parent_id = parent.info.run_id
    storage = study_storage(opts, uri)
    studies = {m: study_name(sweep, m) for m in space.methods}
    try:
        _run_studies(space, opts, uri, exp_id, sweep, parent_id, storage, max_concurrent)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        _settle_after_stop(space, uri, exp_id, sweep, parent_id, storage, interrupted)
        raise
    result = fronts(uri, exp_id, sweep, space.objectives)
    metrics = {"front_size": len(result["front"]), "hypervolume": result["hypervolume"],
               "log_hypervolume": result["log_hypervolume"]}
    for m, f in result["methods"].items():
        metrics[f"hypervolume.{m}"] = f["hypervolume"]
        metrics[f"log_hypervolume.{m}"] = f["log_hypervolume"]
        metrics[f"front_size.{m}"] = len(f["front"])
    finished = len(tracking.child_runs(uri, exp_id, sweep, status="FINISHED"))
    failed = len(tracking.child_runs(uri, exp_id, sweep, status="FAILED"))
    metrics.update({"finished_trials": finished, "failed_trials": failed})
    tracking.log_metrics(uri, parent_id, metrics)
    out = SweepResult(sweep=sweep, experiment=experiment, experiment_id=exp_id,
                      parent_run_id=parent_id, finished=finished, failed=failed,
                      front=result["front"], hypervolume=result["hypervolume"],
                      fronts=result["methods"], studies=studies, seconds=time.time() - start)
    if finished == 0 and failed > 0:
        errors = [r.data.tags.get(tracking.TAG_ERROR, "")
                  for r in tracking.child_runs(uri, exp_id, sweep, status="FAILED")]
        c.set_terminated(parent_id, "FAILED")
        raise SweepFailed(out, [e for e in errors if e][:3])
    c.set_terminated(parent_id, "FINISHED")
    return out


def _run_studies(space, opts, uri, exp_id, sweep, parent_id, storage, max_concurrent) -> None:
    """One Optuna study per method, continued where it stands; Tune runs the missing trials."""
    import optuna
    from optuna.trial import TrialState

    directions = ["maximize" if d == "max" else "minimize" for d in space.objectives.values()]
    for method, entry in space.methods.items():
        name = study_name(sweep, method)
        study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                    load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([search_metric(o) for o in space.objectives])
        if opts.resume:
            _reconcile(study, uri, exp_id, sweep, space.objectives, method)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        remaining = (opts.num_samples or entry["num_samples"]) - done
        if remaining > 0:
            sampler = make_sampler(space, method, len(study.get_trials(deepcopy=False)))
            _run_tune(space, method, opts, uri, exp_id, sweep, parent_id, storage, sampler,
                      remaining, max_concurrent)
        # A trial whose tell was lost (driver interrupted) is settled from MLflow.
        _reconcile(study, uri, exp_id, sweep, space.objectives, method)


def _settle_after_stop(space, uri, exp_id, sweep, parent_id, storage, interrupted) -> None:
    """The driver is stopping early (Ctrl-C or an error): stop Ray's trials, settle the study
    trials and child runs left running (as a ``--resume`` would), and end the parent run
    KILLED (interrupted) or FAILED. Best effort: the original exception is what propagates."""
    import contextlib

    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            ray.shutdown()
    with contextlib.suppress(Exception):
        import optuna

        for method in space.methods:
            study = optuna.load_study(study_name=study_name(sweep, method), storage=storage)
            _reconcile(study, uri, exp_id, sweep, space.objectives, method)
    with contextlib.suppress(Exception):
        tracking.client(uri).set_terminated(parent_id, "KILLED" if interrupted else "FAILED")


def _run_tune(space, method, opts, uri, exp_id, sweep, parent_id, storage, sampler, remaining,
              max_concurrent) -> None:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from .live import LiveView
    from .trial import tune_trainable

    ctx = {
        "tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id, "sweep": sweep,
        "model": space.model, "dataset": space.dataset, "method": method,
        "data_root": space.data_root, "objectives": space.objectives,
        "init_from": space.methods[method].get("init_from"),
        "fixed": space.fixed(method),
        "cpus_per_trial": space.cpus_per_trial, "device": opts.device or space.train.get("device"),
        "gate_dir": os.path.join("/tmp", f"lilnetx-gate-{os.getuid()}"),
    }
    init_ray(opts.address)
    # Ctrl-C raises KeyboardInterrupt at once (Tune's own handler would end fit() normally, and
    # the sweep would look finished); run_sweep then settles the runs.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    searcher = OptunaSearch(DefineByRun(space.searched(method)),
                            metric=[search_metric(o) for o in space.objectives],
                            mode=list(space.objectives.values()), sampler=sampler,
                            study_name=study_name(sweep, method), storage=storage)
    resources = {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, ctx=ctx), resources)
    storage_path = os.path.abspath(os.path.join(".lilnetx", "ray_results"))
    live = LiveView(space, remaining, enabled=opts.live, method=method)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent),
                                    num_samples=remaining, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=study_name(sweep, method), storage_path=storage_path, verbose=0,
                                  callbacks=[live],
                                  failure_config=tune.FailureConfig(max_failures=0,
                                                                    fail_fast=False)),
    )
    import contextlib
    import sys

    # Ray Tune prints its own banners on stdout; stdout is reserved for results (--json).
    with live, contextlib.redirect_stdout(sys.stderr):
        tuner.fit()
