"""Pareto fronts and hypervolumes over metric dictionaries, on Optuna's implementations.

Optuna keeps these helpers in private modules (``optuna.study._multi_objective``,
``optuna._hypervolume``); they are wrapped here in one place, and tests/test_pareto.py checks
them against brute force so an Optuna change cannot go unnoticed.
"""

from __future__ import annotations

import numpy as np


def search_metric(objective: str) -> str:
    """The metric a searched objective is measured by (the metric registry's ``searched_as``):
    accuracy is selected on the validation split so that a sweep never selects on the test
    set (test accuracy is recorded beside it)."""
    from lilnetx.metrics import searched_metric

    return searched_metric(objective)


def _losses(points: list[dict], objectives: dict[str, str], as_searched: bool = True) -> np.ndarray:
    """(n, k) array to minimize: maximized metrics are negated. ``as_searched``: read each
    objective's searched metric (``accuracy`` -> ``val_accuracy``), else the metric itself."""
    key = search_metric if as_searched else (lambda o: o)
    cols = [[(-1.0 if d == "max" else 1.0) * float(p[key(o)]) for o, d in objectives.items()]
            for p in points]
    return np.asarray(cols, dtype=float).reshape(len(points), len(objectives))


def nondominated(points: list[dict], objectives: dict[str, str], *,
                 as_searched: bool = True) -> list[int]:
    """Indices of the points no other point dominates (ties on every objective all kept).

    ``as_searched`` (default): objectives are compared on the metrics the sweep searched
    (``accuracy`` on ``val_accuracy``); ``False`` compares the named metrics as they are, for a
    front drawn over the plotted values.
    """
    if not points:
        return []
    from optuna.study._multi_objective import _is_pareto_front

    mask = _is_pareto_front(_losses(points, objectives, as_searched),
                            assume_unique_lexsorted=False)
    return [i for i, m in enumerate(mask) if m]


def reference_point(points: list[dict], objectives: dict[str, str]) -> dict[str, float]:
    """A reference point worse than every point: 0 for maximized fractions (accuracy,
    sparsities), else the worst observed value pushed 10% further."""
    ref = {}
    for o, d in objectives.items():
        vals = [float(p[search_metric(o)]) for p in points]
        if d == "max" and (o.endswith("accuracy") or o.endswith("sparsity")):
            ref[o] = 0.0
        elif d == "max":
            ref[o] = min(vals) - 0.1 * abs(min(vals)) if vals else 0.0
        else:
            ref[o] = max(vals) + 0.1 * abs(max(vals)) if vals else 0.0
    return ref


def hypervolume(points: list[dict], objectives: dict[str, str],
                reference: dict[str, float] | None = None) -> float:
    """Hypervolume dominated by ``points`` up to ``reference`` (in the objectives' own units)."""
    if not points:
        return 0.0
    reference = reference or reference_point(points, objectives)
    losses = _losses(points, objectives)
    ref = np.asarray([(-1.0 if d == "max" else 1.0) * reference[o] for o, d in objectives.items()])
    inside = np.all(losses < ref, axis=1)
    if not inside.any():
        return 0.0
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(losses[inside], ref))


# ------------------------------------------------------------------ log hypervolume

#: Metric units measured on a log10 axis by :func:`log_hypervolume` (scale-like, positive);
#: every other unit (``fraction``: accuracies, sparsities; ``count``) stays linear.
LOG_UNITS = frozenset({"bytes", "ms", "macs", "bits", "ratio"})
#: How far past the worst value the log reference lies, in decades: 10% further
#: multiplicatively, so the reference (and the volume) does not change when a unit does.
LOG_MARGIN = float(np.log10(1.1))


def log_objectives(objectives: dict[str, str]) -> list[str]:
    """The objectives :func:`log_hypervolume` takes log10 of: those whose searched metric has a
    unit in :data:`LOG_UNITS` in the metric registry (an unregistered metric stays linear)."""
    from lilnetx.metrics import METRICS

    return [o for o in objectives
            if search_metric(o) in METRICS and METRICS.get(search_metric(o)).unit in LOG_UNITS]


def to_log(points: list[dict], objectives: dict[str, str]) -> tuple[list[dict], int]:
    """``points`` with the :func:`log_objectives` values replaced by their log10, and how many
    points were left out because such a value is <= 0 or not finite (excluded, not clamped)."""
    logs = [search_metric(o) for o in log_objectives(objectives)]
    out, excluded = [], 0
    for p in points:
        vals = [float(p[k]) for k in logs]
        if not all(np.isfinite(v) and v > 0 for v in vals):
            excluded += 1
            continue
        out.append({**p, **{k: float(np.log10(v)) for k, v in zip(logs, vals, strict=True)}})
    return out, excluded


def log_reference_point(log_points: list[dict], objectives: dict[str, str]) -> dict[str, float]:
    """Reference point on transformed values (:func:`to_log`'s points): for a log objective the
    worst log10 value pushed :data:`LOG_MARGIN` further, else :func:`reference_point`'s rule."""
    ref = reference_point(log_points, objectives)
    for o in log_objectives(objectives):
        vals = [float(p[search_metric(o)]) for p in log_points]
        if vals:
            ref[o] = min(vals) - LOG_MARGIN if objectives[o] == "max" else max(vals) + LOG_MARGIN
    return ref


def log_hypervolume(points: list[dict], objectives: dict[str, str],
                    log_reference: dict[str, float] | None = None) -> float:
    """Hypervolume with the :func:`log_objectives` on a log10 axis (decades), from
    ``log_reference`` (transformed values; default :func:`log_reference_point`). Points with a
    log objective <= 0 are left out (:func:`to_log` counts them). Multiplying a log objective by
    a constant leaves it unchanged."""
    pts, _ = to_log(points, objectives)
    if not pts:
        return 0.0
    return hypervolume(pts, objectives, log_reference or log_reference_point(pts, objectives))


# ------------------------------------------------------------------ incremental fronts


def _dominated_by_any(front: np.ndarray, loss: np.ndarray) -> bool:
    """Whether a row of ``front`` (k, d losses) dominates ``loss`` (d,)."""
    if not len(front):
        return False
    le = np.all(front <= loss, axis=1)
    return bool(np.any(le & np.any(front < loss, axis=1)))


class IncrementalFront:
    """The non-dominated keys of a set of points that mostly grows.

    ``update(points, revs)`` takes every point (key -> metric dict) with a revision per key
    (:attr:`explorer.runs.RunRecord.rev`); when the previous call's keys are all still there
    with the same revisions, only the new points are merged into the kept front (the front of a
    superset is the front of the old front plus the new points); otherwise the front is
    computed again. ``as_searched`` as in :func:`nondominated`.
    """

    def __init__(self, objectives: dict[str, str], *, as_searched: bool = True):
        self.objectives = dict(objectives)
        self.as_searched = as_searched
        self._revs: dict = {}
        self._front: list = []
        self.merged = 0
        """How many updates merged instead of recomputing (for tests and benchmarks)."""

    def update(self, points: dict, revs: dict) -> list:
        """The keys of the non-dominated points, in the order of ``points``."""
        grows = all(revs.get(k) == r for k, r in self._revs.items())
        if grows and self._revs:
            added = [k for k in points if k not in self._revs]
            if added:
                cand = [k for k in self._front] + added
                idx = nondominated([points[k] for k in cand], self.objectives,
                                   as_searched=self.as_searched)
                keep = {cand[i] for i in idx}
                self._front = [k for k in points if k in keep]
            self.merged += 1
        else:
            keys = list(points)
            idx = nondominated([points[k] for k in keys], self.objectives,
                               as_searched=self.as_searched)
            self._front = [keys[i] for i in idx]
        self._revs = {k: revs.get(k) for k in points}
        return list(self._front)


class FrontHistory:
    """The front of the first ``k`` points, for every ``k``, of points that arrive in order.

    Only the arrivals that change the front are kept (a dominated arrival changes nothing), so
    the history of 10,000 runs is a few hundred fronts; :meth:`extend` adds arrivals in
    O(front size) each. Points are metric dicts read as searched (:func:`search_metric`).
    """

    def __init__(self, objectives: dict[str, str]):
        self.objectives = dict(objectives)
        self.keys: list = []
        self.changes: list[tuple[int, list]] = []
        """(number of points so far, front keys after that point) at each change."""
        self._front_keys: list = []
        self._front = np.zeros((0, len(objectives)))

    def extend(self, keys: list, points: list[dict]) -> None:
        if not points:
            return
        losses = _losses(points, self.objectives)
        for key, loss in zip(keys, losses, strict=True):
            self.keys.append(key)
            if _dominated_by_any(self._front, loss):
                continue
            front = self._front
            keep = ~(np.all(loss <= front, axis=1) & np.any(loss < front, axis=1)) if len(
                front) else np.zeros(0, dtype=bool)
            self._front_keys = [k for k, m in zip(self._front_keys, keep, strict=True) if m]
            self._front_keys.append(key)
            self._front = np.vstack([front[keep], loss[None, :]])
            self.changes.append((len(self.keys), list(self._front_keys)))
