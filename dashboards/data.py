"""Runs of a sweep experiment, read from MLflow into plain records for the figures.

Every failure a user can meet (server down, unknown experiment, a run without its artifacts)
becomes a :class:`DashboardDataError` with a message the page shows. An experiment with no runs
yet is not an error: a sweep that has just started has none, and the live page says so and
fills in as runs arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from explorer import tracking
from explorer.pareto import search_metric
from explorer.runs import RunCache, RunRecord, cache_for
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
class Experiment:
    name: str
    experiment_id: str
    runs: list[RunRecord]
    sweeps: list[str] = field(default_factory=list)
    objectives: dict[str, dict] = field(default_factory=dict)
    version: int = 0
    """:attr:`explorer.runs.RunCache.version` of the runs (grows when any run changed)."""


def list_experiments(uri: str) -> list[str]:
    try:
        tracking.check_server(uri, timeout=3)
        return [e.name for e in tracking.client(uri).search_experiments()
                if e.name != "Default"]
    except Exception as e:
        raise DashboardDataError(f"tracking server {uri} is unreachable: {e}") from None


_IDS: dict[tuple[str, str], str] = {}


def experiment_cache(uri: str, name: str) -> RunCache:
    """The process-wide run cache of experiment ``name`` (its id looked up once)."""
    key = (uri, name)
    if key not in _IDS:
        try:
            tracking.check_server(uri, timeout=3)
            exp = tracking.client(uri).get_experiment_by_name(name)
        except Exception as e:
            raise DashboardDataError(f"tracking server {uri} is unreachable: {e}") from None
        if exp is None:
            raise DashboardDataError(f"experiment {name!r} does not exist at {uri}")
        _IDS[key] = exp.experiment_id
    return cache_for(uri, _IDS[key])


def load_experiment(uri: str, name: str, *, full: bool = False, background: bool = False,
                    update: bool = True) -> Experiment:
    """All trial runs of experiment ``name`` (every sweep), oldest first, brought up to date
    incrementally (:meth:`explorer.runs.RunCache.refresh`; ``full``: read everything again;
    ``background``: the periodic full read in a thread; ``update=False``: as the last refresh
    left them, no query, for a second callback of the same poll)."""
    cache = experiment_cache(uri, name)
    try:
        if full:
            cache.reload()
        elif update or cache.last is None:
            cache.refresh(background=background)
    except Exception as e:
        raise DashboardDataError(f"tracking server {uri} is unreachable: {e}") from None
    return Experiment(name, cache.experiment_id, cache.records(), cache.sweeps,
                      dict(cache.objectives), cache.version)


def objectives_of(exp: Experiment, sweep: str | None) -> dict[str, str]:
    """The objectives of a sweep (default: the newest), as searched metric -> max/min."""
    if not exp.sweeps:
        return {}
    obj = exp.objectives.get(sweep or exp.sweeps[-1]) or exp.objectives[exp.sweeps[-1]]
    return {search_metric(k): v for k, v in obj.items()}
