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
