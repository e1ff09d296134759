"""Runs of a sweep experiment, read from MLflow into plain records for the figures.

Every failure a user can meet (server down, unknown experiment, a run without its artifacts)
becomes a :class:`DashboardDataError` with a message the page shows. An experiment with no runs
yet is not an error: a sweep that has just started has none, and the live page says so and
fills in as runs arrive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from explorer import tracking
from explorer.pareto import search_metric
from lilnetx.errors import LilNetXError


def axis_metrics() -> list[str]:
    """Metrics offered as axes: every objective of :mod:`lilnetx.metrics`'s registry (a metric
    registered there, by us or a plugin, becomes an axis with its direction and unit)."""
    from lilnetx.metrics import metric_names

    return metric_names(objectives_only=True)


def direction(name: str) -> str:
    """``max`` or ``min``, from the metric registry (``min`` for a metric it does not know)."""
    from lilnetx.metrics import METRICS

    return METRICS.get(name).direction if name in METRICS else "min"


class DashboardDataError(LilNetXError):
    """Something the page should say instead of drawing."""


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    sweep: str
    method: str
    trial: int
    start_time: int
    params: dict
    metrics: dict
    error: str = ""


@dataclass
class Experiment:
    name: str
    experiment_id: str
    runs: list[RunRecord]
    sweeps: list[str] = field(default_factory=list)
    objectives: dict[str, dict] = field(default_factory=dict)


def _number(v: str):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def list_experiments(uri: str) -> list[str]:
    try:
        tracking.check_server(uri, timeout=3)
        return [e.name for e in tracking.client(uri).search_experiments()
                if e.name != "Default"]
    except Exception as e:
        raise DashboardDataError(f"tracking server {uri} is unreachable: {e}") from None


def load_experiment(uri: str, name: str) -> Experiment:
    """All trial runs of experiment ``name`` (every sweep), oldest first."""
    try:
        tracking.check_server(uri, timeout=3)
        c = tracking.client(uri)
        exp = c.get_experiment_by_name(name)
    except Exception as e:
        raise DashboardDataError(f"tracking server {uri} is unreachable: {e}") from None
    if exp is None:
        raise DashboardDataError(f"experiment {name!r} does not exist at {uri}")
    runs = []
    for r in tracking.child_runs(uri, exp.experiment_id):
        tags = r.data.tags
        try:
            trial = int(tags.get(tracking.TAG_TRIAL, -1))
        except ValueError:
            trial = -1
        runs.append(RunRecord(
            run_id=r.info.run_id, name=r.info.run_name or r.info.run_id[:8],
            status=r.info.status, sweep=tags.get(tracking.TAG_SWEEP, ""),
            method=tags.get(tracking.TAG_METHOD, "lilnetx"), trial=trial,
            start_time=r.info.start_time or 0,
            params={k: _number(v) for k, v in r.data.params.items()},
            metrics=dict(r.data.metrics), error=tags.get(tracking.TAG_ERROR, "")))
    runs.sort(key=lambda r: (r.start_time, r.trial))
    parents = c.search_runs([exp.experiment_id],
                            filter_string=f"tags.`{tracking.TAG_ROLE}` = 'sweep'",
                            order_by=["attributes.start_time ASC"])
    objectives = {}
    for p in parents:
        try:
            objectives[p.data.tags[tracking.TAG_SWEEP]] = json.loads(
                p.data.tags.get(tracking.TAG_OBJECTIVES, "{}"))
        except (KeyError, json.JSONDecodeError):
            continue
    return Experiment(name, exp.experiment_id, runs, list(objectives), objectives)


def objectives_of(exp: Experiment, sweep: str | None) -> dict[str, str]:
    """The objectives of a sweep (default: the newest), as searched metric -> max/min."""
    if not exp.sweeps:
        return {}
    obj = exp.objectives.get(sweep or exp.sweeps[-1]) or exp.objectives[exp.sweeps[-1]]
    return {search_metric(k): v for k, v in obj.items()}
