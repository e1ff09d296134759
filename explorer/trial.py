"""One sweep trial, run by a Ray worker: train, write the ``.lnx``, measure, record in MLflow,
report every objective to Tune. A trial that fails raises, after marking its MLflow run FAILED
with the error, so the searcher tells the study the trial failed."""

from __future__ import annotations

import json
import math
import os
import tempfile
import traceback

from . import tracking
from .pareto import search_metric


def _spec(ctx: dict, values: dict):
    import lilnetx
    from lilnetx.experiment import RunSpec
    from lilnetx.train import TrainConfig

    train_keys = set(TrainConfig.__dataclass_fields__) - {"device"}
    train = {k: v for k, v in values.items() if k in train_keys}
    for k in ("epochs", "batch_size", "seed"):
        if k in train:
            train[k] = int(train[k])
    cfg = TrainConfig(device=ctx.get("device"), **train)
    limit = values.get("limit")
    params = {p.name: p for p in lilnetx.methods.method_class(ctx["method"]).params}
    options = {k: params[k].check(values[k]) for k in params if k in values}
    return RunSpec(model=ctx["model"], dataset=ctx["dataset"], method=ctx["method"],
                   width=float(values.get("width", 1.0)), data_root=ctx.get("data_root"),
                   val_fraction=float(values.get("val_fraction", 0.1)),
                   limit=int(limit) if limit else None, train=cfg, options=options,
                   init_from=ctx.get("init_from")), lilnetx


class SettledElsewhere(RuntimeError):
    """The trial's run was terminated by someone else (a ``--resume``) while it trained."""


def run_trial(config: dict, ctx: dict) -> dict:
    """Train one configuration and return its metrics (raises on failure)."""
    import torch

    from lilnetx.factory import describe

    from .gate import CoreGate

    torch.set_num_threads(max(1, int(ctx.get("cpus_per_trial", 1))))
    uri = ctx["tracking_uri"]
    trial_no = int(config.get("optuna_trial", -1))
    values = {**ctx["fixed"], **{k: v for k, v in config.items() if k != "optuna_trial"}}
    c = tracking.client(uri)
    tags = {tracking.TAG_PARENT: ctx["parent_run_id"], tracking.TAG_SWEEP: ctx["sweep"],
            tracking.TAG_METHOD: ctx["method"], tracking.TAG_ROLE: "trial",
            tracking.TAG_TRIAL: str(trial_no), "lilnetx.core.model": describe(ctx["model"]),
            "lilnetx.dataset": describe(ctx["dataset"])}
    run = c.create_run(ctx["experiment_id"], tags=tags, run_name=f"{ctx['sweep']}-t{trial_no:03d}")
    run_id = run.info.run_id
    gate = CoreGate(ctx["gate_dir"])
    try:
        tracking.log_params(uri, run_id, {**values, "model": describe(ctx["model"]),
                                          "dataset": describe(ctx["dataset"]),
                                          "method": ctx["method"]})
        spec, lilnetx = _spec(ctx, values)

        def progress(ev: dict) -> None:
            if ev["event"] == "step":
                gate.checkpoint()
            else:
                tracking.log_metrics(uri, run_id, {tracking.EPOCH_KEYS.get(k, k): v
                                                   for k, v in ev.items()
                                                   if k not in ("event", "epoch")}, ev["epoch"])

        gate.enter()
        outcome = lilnetx.run(spec, progress)
        from lilnetx.experiment import finalize

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.lnx")
            summary = finalize(outcome, path, latency=False)
            from lilnetx.deploy.export import example_input, latency_metrics

            shape = tuple(example_input(outcome.arch).shape[1:])
            with gate.exclusive():  # only the timing itself holds the machine
                summary.update(latency_metrics(outcome.slim, outcome.plain, shape))
            layers = os.path.join(tmp, "layers.json")
            with open(layers, "w") as f:
                json.dump([s.as_dict() for s in outcome.layers], f, indent=1)
            c.log_artifact(run_id, path)
            c.log_artifact(run_id, layers)
        summary.pop("model_path", None)
        missing = [o for o in ctx["objectives"]
                   if not isinstance(summary.get(search_metric(o)), int | float)
                   or not math.isfinite(summary[search_metric(o)])]
        if missing:
            raise RuntimeError(f"objectives missing or not finite: {', '.join(missing)}")
        tracking.log_metrics(uri, run_id, summary)
        if c.get_run(run_id).info.status != "RUNNING":
            # orphaned by a dead driver and already settled (KILLED) by a --resume, which has
            # failed this study trial and run a replacement: finishing it now would duplicate
            raise SettledElsewhere(f"run {run_id} was settled by a resumed sweep while the "
                                   "trial ran; its result is discarded")
        c.set_terminated(run_id, "FINISHED")
        return summary
    except SettledElsewhere:
        raise  # leave the run as the resume left it (KILLED)
    except BaseException as e:
        msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        try:
            c.set_tag(run_id, tracking.TAG_ERROR, msg[:4000])
            c.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        finally:
            raise
    finally:
        gate.close()


def tune_trainable(config: dict, ctx: dict) -> None:
    """The Ray Tune function trainable: one report with every metric."""
    import ray
    from ray import tune

    if not ctx.get("device"):
        # A trial uses CUDA when Ray granted it GPUs (CUDA_VISIBLE_DEVICES then names them), else
        # the CPU: Ray no longer hides the GPUs from a worker granted none (ray#54868).
        ctx = {**ctx, "device": "cuda" if ray.get_gpu_ids() else "cpu"}
    summary = run_trial(config, ctx)
    tune.report({k: v for k, v in summary.items() if isinstance(v, int | float)})
