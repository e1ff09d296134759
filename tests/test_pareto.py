"""Tests of explorer.pareto against brute force.

explorer/pareto.py wraps private Optuna helpers (``optuna.study._multi_objective._is_pareto_front``
and ``optuna._hypervolume.compute_hypervolume``); these tests make an Optuna change visible.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from explorer.pareto import (
    LOG_MARGIN,
    hypervolume,
    log_hypervolume,
    log_objectives,
    log_reference_point,
    nondominated,
    reference_point,
    search_metric,
    to_log,
)

OBJECTIVE_SETS = {
    "acc-max/size-min": {"accuracy": "max", "size_bytes": "min"},
    "ratio-max/sparsity-max": {"compression_ratio": "max", "slice_sparsity": "max"},
    "flops-min/latency-min": {"flops": "min", "latency_ms": "min"},
    "acc-max/size-min/latency-min": {"accuracy": "max", "size_bytes": "min", "latency_ms": "min"},
    "bits-min/sparsity-max/valacc-max": {"bits_estimate": "min", "weight_sparsity": "max",
                                         "val_accuracy": "max"},
    "min/min/min": {"size_bytes": "min", "flops": "min", "latency_ms": "min"},
}


def random_points(rng: np.random.Generator, n: int, objectives: dict[str, str], *,
                  levels: int | None) -> list[dict]:
    """n metric dicts keyed by the searched metrics; ``levels`` small integers force ties.
    A decoy test ``accuracy`` unrelated to ``val_accuracy`` checks the searched metric is used."""
    points = []
    for _ in range(n):
        p = {}
        for o in objectives:
            v = rng.integers(0, levels) / levels if levels else rng.random()
            p[search_metric(o)] = float(v) * (1.0 if o.endswith(("accuracy", "sparsity")) else 1e4)
        p.setdefault("accuracy", float(rng.random()))  # decoy: never an objective's metric
        points.append(p)
    if n >= 4:  # exact duplicates
        for i in rng.choice(n, size=n // 4, replace=False):
            points.append(dict(points[int(i)]))
        rng.shuffle(points)
    return points


def signed(p: dict, objectives: dict[str, str]) -> list[float]:
    """Values to maximize."""
    return [(1.0 if d == "max" else -1.0) * p[search_metric(o)] for o, d in objectives.items()]


def dominates(a: dict, b: dict, objectives: dict[str, str]) -> bool:
    sa, sb = signed(a, objectives), signed(b, objectives)
    return all(x >= y for x, y in zip(sa, sb, strict=True)) and any(
        x > y for x, y in zip(sa, sb, strict=True))


def brute_front(points: list[dict], objectives: dict[str, str]) -> list[int]:
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, objectives) for j, q in enumerate(points) if j != i)]


def gains(points: list[dict], objectives: dict[str, str], ref: dict[str, float]) -> np.ndarray:
    """(n, k): how far each point is better than the reference, per objective (may be <= 0)."""
    return np.asarray([[(p[search_metric(o)] - ref[o]) if d == "max" else (ref[o] - p[search_metric(o)])
                        for o, d in objectives.items()] for p in points], dtype=float)


def brute_volume(g: np.ndarray) -> float:
    """Exact volume of the union of boxes [0, g_i] (boxes with a coordinate <= 0 are empty), by
    splitting space on every box edge and summing the covered cells."""
    g = g[np.all(g > 0, axis=1)]
    if len(g) == 0:
        return 0.0
    edges = [np.unique(np.concatenate([[0.0], g[:, k]])) for k in range(g.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(e) - 1) for e in edges]):
        upper = np.asarray([edges[k][c + 1] for k, c in enumerate(cell)])
        if np.any(np.all(g >= upper, axis=1)):
            total += float(np.prod([edges[k][c + 1] - edges[k][c] for k, c in enumerate(cell)]))
    return total


def monte_carlo_volume(g: np.ndarray, rng: np.random.Generator, samples: int) -> tuple[float, float]:
    """Monte-Carlo estimate of the union volume and its standard error."""
    g = g[np.all(g > 0, axis=1)]
    if len(g) == 0:
        return 0.0, 0.0
    box = g.max(axis=0)
    u = rng.random((samples, g.shape[1])) * box
    covered = np.zeros(samples, dtype=bool)
    for gi in g:
        covered |= np.all(u <= gi, axis=1)
    frac = covered.mean()
    vol = float(np.prod(box))
    return vol * frac, vol * np.sqrt(frac * (1 - frac) / samples)


# --------------------------------------------------------------------------- search metric


def test_search_metric():
    assert search_metric("accuracy") == "val_accuracy"
    from lilnetx.metrics import METRICS

    assert {n: m.searched_as for n, m in METRICS.items() if m.searched_as} == {
        "accuracy": "val_accuracy"}
    for o in ("val_accuracy", "size_bytes", "compression_ratio", "latency_ms", "slice_sparsity"):
        assert search_metric(o) == o


# --------------------------------------------------------------------------- non-dominated


@pytest.mark.parametrize("levels", [3, 5, None], ids=["levels3", "levels5", "continuous"])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("objectives", list(OBJECTIVE_SETS.values()), ids=list(OBJECTIVE_SETS))
def test_nondominated_matches_brute_force(objectives, seed, n, levels):
    rng = np.random.default_rng([seed, n, levels or 0, len(objectives)])
    points = random_points(rng, n, objectives, levels=levels)
    got = nondominated(points, objectives)
    assert got == brute_front(points, objectives)
    assert got == sorted(set(got))


def test_nondominated_keeps_all_ties_and_uses_val_accuracy():
    obj = {"accuracy": "max", "size_bytes": "min"}
    pts = [
        {"val_accuracy": 0.9, "accuracy": 0.1, "size_bytes": 100},   # front
        {"val_accuracy": 0.9, "accuracy": 0.99, "size_bytes": 100},  # duplicate on the metrics
        {"val_accuracy": 0.8, "accuracy": 0.99, "size_bytes": 100},  # dominated (test acc ignored)
        {"val_accuracy": 0.95, "accuracy": 0.2, "size_bytes": 200},  # front
        {"val_accuracy": 0.95, "accuracy": 0.2, "size_bytes": 250},  # dominated by the previous
        {"val_accuracy": 0.5, "accuracy": 0.2, "size_bytes": 50},    # front
    ]
    assert nondominated(pts, obj) == [0, 1, 3, 5]
    assert nondominated(pts, {"accuracy": "min", "size_bytes": "max"}) == [2, 4, 5]
    assert nondominated([], obj) == []
    assert nondominated([pts[0]], obj) == [0]
    assert nondominated([pts[0]] * 5, obj) == [0, 1, 2, 3, 4]


def test_nondominated_three_objectives_small():
    obj = {"size_bytes": "min", "flops": "min", "latency_ms": "min"}
    pts = [dict(zip(obj, v, strict=True)) for v in
           [(1, 5, 5), (5, 1, 5), (5, 5, 1), (5, 5, 5), (1, 5, 6), (2, 2, 2), (2, 2, 2)]]
    assert nondominated(pts, obj) == [0, 1, 2, 5, 6]


# --------------------------------------------------------------------------- reference point


def test_reference_point_rules():
    pts = [
        {"val_accuracy": 0.5, "accuracy": 0.4, "size_bytes": 1000.0, "compression_ratio": 10.0,
         "latency_ms": 2.0, "weight_sparsity": 0.3, "slice_sparsity": 0.1,
         "channel_sparsity": 0.2, "flops": 4.0e6},
        {"val_accuracy": 0.9, "accuracy": 0.95, "size_bytes": 3000.0, "compression_ratio": 40.0,
         "latency_ms": 5.0, "weight_sparsity": 0.6, "slice_sparsity": 0.7,
         "channel_sparsity": 0.1, "flops": 1.0e6},
    ]
    ref = reference_point(pts, {"accuracy": "max", "size_bytes": "min"})
    assert ref == {"accuracy": 0.0, "size_bytes": pytest.approx(3300.0)}
    ref = reference_point(pts, {"val_accuracy": "max", "weight_sparsity": "max",
                                "slice_sparsity": "max"})
    assert ref == {"val_accuracy": 0.0, "weight_sparsity": 0.0, "slice_sparsity": 0.0}
    ref = reference_point(pts, {"compression_ratio": "max", "latency_ms": "min",
                                "flops": "min"})
    assert ref == {"compression_ratio": pytest.approx(9.0), "latency_ms": pytest.approx(5.5),
                   "flops": pytest.approx(4.4e6)}
    # a minimized sparsity or accuracy is not a maximized fraction: worst + 10%
    ref = reference_point(pts, {"channel_sparsity": "min", "accuracy": "min"})
    assert ref == {"channel_sparsity": pytest.approx(0.22), "accuracy": pytest.approx(0.99)}


def test_reference_point_negative_values_move_outward():
    pts = [{"latency_ms": -5.0, "compression_ratio": -3.0},
           {"latency_ms": -2.0, "compression_ratio": -1.0}]
    ref = reference_point(pts, {"latency_ms": "min", "compression_ratio": "max"})
    assert ref == {"latency_ms": pytest.approx(-1.8), "compression_ratio": pytest.approx(-3.3)}


def test_reference_point_empty():
    assert reference_point([], {"accuracy": "max", "size_bytes": "min",
                                "compression_ratio": "max"}) == {
        "accuracy": 0.0, "size_bytes": 0.0, "compression_ratio": 0.0}


@pytest.mark.parametrize("seed", range(5))
def test_reference_point_is_worse_than_every_point(seed):
    rng = np.random.default_rng(seed)
    obj = {"accuracy": "max", "size_bytes": "min", "compression_ratio": "max"}
    pts = [{"val_accuracy": float(rng.uniform(0.01, 1)), "size_bytes": float(rng.uniform(1, 1e5)),
            "compression_ratio": float(rng.uniform(1, 100))} for _ in range(20)]
    assert np.all(gains(pts, obj, reference_point(pts, obj)) > 0)


# --------------------------------------------------------------------------- hypervolume


@pytest.mark.parametrize("levels", [4, None], ids=["ties", "continuous"])
@pytest.mark.parametrize("n", [1, 2, 5, 30])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("objectives", [v for v in OBJECTIVE_SETS.values() if len(v) == 2],
                         ids=[k for k, v in OBJECTIVE_SETS.items() if len(v) == 2])
def test_hypervolume_2d_matches_union_of_rectangles(objectives, seed, n, levels):
    rng = np.random.default_rng([seed, n, levels or 0])
    points = random_points(rng, n, objectives, levels=levels)
    ref = reference_point(points, objectives)
    expected = brute_volume(gains(points, objectives, ref))
    assert hypervolume(points, objectives) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert hypervolume(points, objectives, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_2d_with_points_outside_the_reference(seed):
    """A reference inside the cloud: points not strictly better on every axis add nothing."""
    rng = np.random.default_rng(100 + seed)
    obj = {"accuracy": "max", "size_bytes": "min"}
    points = random_points(rng, 25, obj, levels=6)
    ref = {"accuracy": 0.4, "size_bytes": 6000.0}
    g = gains(points, obj, ref)
    assert not np.all(g > 0) and np.any(np.all(g > 0, axis=1))
    assert hypervolume(points, obj, ref) == pytest.approx(brute_volume(g), rel=1e-9)


def test_hypervolume_2d_by_hand():
    obj = {"accuracy": "max", "size_bytes": "min"}
    pts = [{"val_accuracy": 0.5, "size_bytes": 1.0}, {"val_accuracy": 1.0, "size_bytes": 3.0}]
    ref = {"accuracy": 0.0, "size_bytes": 4.0}
    # 0.5 x 3 + 1.0 x 1 - overlap 0.5 x 1 = 2.0
    assert hypervolume(pts, obj, ref) == pytest.approx(2.0)
    assert hypervolume(pts + pts, obj, ref) == pytest.approx(2.0)  # duplicates add nothing


def test_hypervolume_degenerate():
    obj = {"accuracy": "max", "size_bytes": "min"}
    assert hypervolume([], obj) == 0.0
    pts = [{"val_accuracy": 0.5, "size_bytes": 10.0}]
    assert hypervolume(pts, obj, {"accuracy": 0.6, "size_bytes": 100.0}) == 0.0
    assert hypervolume(pts, obj, {"accuracy": 0.0, "size_bytes": 5.0}) == 0.0
    assert hypervolume(pts, obj, {"accuracy": 0.5, "size_bytes": 100.0}) == 0.0  # on the edge


@pytest.mark.parametrize("levels", [4, None], ids=["ties", "continuous"])
@pytest.mark.parametrize("n", [1, 3, 12])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("objectives", [v for v in OBJECTIVE_SETS.values() if len(v) == 3],
                         ids=[k for k, v in OBJECTIVE_SETS.items() if len(v) == 3])
def test_hypervolume_3d_exact_and_monte_carlo(objectives, seed, n, levels):
    rng = np.random.default_rng([seed, n, levels or 0, 3])
    points = random_points(rng, n, objectives, levels=levels)
    ref = reference_point(points, objectives)
    g = gains(points, objectives, ref)
    got = hypervolume(points, objectives)
    assert got == pytest.approx(brute_volume(g), rel=1e-9, abs=1e-12)
    estimate, stderr = monte_carlo_volume(g, np.random.default_rng(seed), 200_000)
    assert abs(got - estimate) <= 5 * stderr + 1e-9 * abs(got), (got, estimate, stderr)


def test_hypervolume_3d_by_hand():
    obj = {"size_bytes": "min", "flops": "min", "latency_ms": "min"}
    pts = [{"size_bytes": 0.0, "flops": 0.0, "latency_ms": 1.0},
           {"size_bytes": 1.0, "flops": 1.0, "latency_ms": 0.0}]
    ref = {"size_bytes": 2.0, "flops": 2.0, "latency_ms": 2.0}
    # 2x2x1 + 1x1x2 - overlap 1x1x1 = 5
    assert hypervolume(pts, obj, ref) == pytest.approx(5.0)


# --------------------------------------------------------------------------- log hypervolume


def test_log_objectives_follow_metric_units():
    assert log_objectives({"accuracy": "max", "size_bytes": "min"}) == ["size_bytes"]
    assert log_objectives({"compression_ratio": "max", "slice_sparsity": "max"}) == [
        "compression_ratio"]
    assert log_objectives({"bits_estimate": "min", "flops": "min", "latency_ms": "min",
                           "val_accuracy": "max", "not_registered": "min"}) == [
        "bits_estimate", "flops", "latency_ms"]


def log_transformed(points: list[dict], objectives: dict[str, str]) -> list[dict]:
    """Brute force: log10 of the scale-like objectives, by hand."""
    logs = {search_metric(o) for o in objectives if o not in ("accuracy", "val_accuracy")
            and not o.endswith("sparsity")}
    return [{k: (float(np.log10(v)) if k in logs else v) for k, v in p.items()} for p in points]


@pytest.mark.parametrize("n", [1, 5, 20])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("objectives", list(OBJECTIVE_SETS.values()), ids=list(OBJECTIVE_SETS))
def test_log_hypervolume_matches_brute_force_on_transformed_points(objectives, seed, n):
    rng = np.random.default_rng([seed, n, 7])
    points = [{k: v + (0 if k.endswith(("accuracy", "sparsity")) else 1.0) for k, v in p.items()}
              for p in random_points(rng, n, objectives, levels=None)]  # all sizes > 0
    tp = log_transformed(points, objectives)
    ref = {}
    for o, d in objectives.items():
        vals = [p[search_metric(o)] for p in tp]
        if o in log_objectives(objectives):
            ref[o] = max(vals) + np.log10(1.1) if d == "min" else min(vals) - np.log10(1.1)
        else:
            ref[o] = reference_point(tp, {o: d})[o]
    assert log_reference_point(to_log(points, objectives)[0], objectives) == pytest.approx(ref)
    expected = brute_volume(gains(tp, objectives, ref))
    assert log_hypervolume(points, objectives) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert log_hypervolume(points, objectives, ref) == pytest.approx(expected, rel=1e-9,
                                                                     abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_log_hypervolume_is_scale_invariant(seed):
    rng = np.random.default_rng(200 + seed)
    obj = {"accuracy": "max", "size_bytes": "min", "latency_ms": "min"}
    pts = [{"val_accuracy": float(rng.uniform(0.1, 1)), "size_bytes": float(rng.uniform(1e3, 1e6)),
            "latency_ms": float(rng.uniform(0.1, 5))} for _ in range(15)]
    kb = [{**p, "size_bytes": 1000 * p["size_bytes"]} for p in pts]
    assert log_hypervolume(kb, obj) == pytest.approx(log_hypervolume(pts, obj), rel=1e-9)
    assert log_hypervolume(pts, obj) > 0
    assert hypervolume(kb, obj) == pytest.approx(1000 * hypervolume(pts, obj), rel=1e-9)
    ref, ref_kb = (log_reference_point(to_log(p, obj)[0], obj) for p in (pts, kb))
    assert ref_kb["size_bytes"] == pytest.approx(ref["size_bytes"] + 3)
    assert ref_kb["latency_ms"] == ref["latency_ms"] and ref["accuracy"] == 0.0


def test_log_hypervolume_by_hand_and_reference_reported():
    obj = {"accuracy": "max", "size_bytes": "min"}
    pts = [{"val_accuracy": 0.5, "size_bytes": 10.0}, {"val_accuracy": 1.0, "size_bytes": 1000.0}]
    ref = log_reference_point(to_log(pts, obj)[0], obj)
    assert ref == {"accuracy": 0.0, "size_bytes": pytest.approx(3 + LOG_MARGIN)}
    # decades of size below the reference: 0.5 x (2 + m) + 1.0 x m - overlap 0.5 x m = 1 + m
    assert log_hypervolume(pts, obj) == pytest.approx(1 + LOG_MARGIN)
    assert log_hypervolume(pts, obj, {"accuracy": 0.0, "size_bytes": 4.0}) == pytest.approx(
        0.5 * 3 + 1.0 * 1 - 0.5 * 1)


def test_log_hypervolume_excludes_non_positive_values():
    obj = {"accuracy": "max", "size_bytes": "min"}
    good = [{"val_accuracy": 0.5, "size_bytes": 10.0}, {"val_accuracy": 1.0, "size_bytes": 1000.0}]
    bad = [{"val_accuracy": 0.99, "size_bytes": 0.0}, {"val_accuracy": 0.7, "size_bytes": -5.0},
           {"val_accuracy": 0.7, "size_bytes": float("nan")}]
    kept, excluded = to_log(good + bad, obj)
    assert excluded == 3 and [p["size_bytes"] for p in kept] == pytest.approx([1.0, 3.0])
    assert log_hypervolume(good + bad, obj) == pytest.approx(log_hypervolume(good, obj))
    assert log_hypervolume(bad, obj) == 0.0 and log_hypervolume([], obj) == 0.0
    # accuracy is not transformed: a zero accuracy is kept
    assert to_log([{"val_accuracy": 0.0, "size_bytes": 1.0}], obj)[1] == 0


# ---------------------------------------------------------------- incremental fronts


@pytest.mark.parametrize("name", list(OBJECTIVE_SETS))
def test_incremental_front_equals_recomputed(name):
    from explorer.pareto import IncrementalFront

    objectives = OBJECTIVE_SETS[name]
    rng = np.random.default_rng(7)
    pts = random_points(rng, 300, objectives, levels=6)  # with duplicates: ties
    n = len(pts)
    inc = IncrementalFront(objectives)
    revs, points = {}, {}
    for start in range(0, n, 37):  # the set grows in batches
        for i in range(start, min(start + 37, n)):
            points[i], revs[i] = pts[i], 0
        got = inc.update(dict(points), dict(revs))
        want = nondominated([points[k] for k in points], objectives)
        assert got == [list(points)[i] for i in want]
    assert inc.merged >= 7
    # a changed point (new revision) is not a pure addition: computed again, still right
    points[0] = pts[1]
    revs[0] = 1
    merged = inc.merged
    got = inc.update(dict(points), dict(revs))
    assert inc.merged == merged
    assert got == [list(points)[i] for i in nondominated(list(points.values()), objectives)]
    # a removed point: computed again
    del points[5], revs[5]
    got = inc.update(dict(points), dict(revs))
    assert got == [list(points)[i] for i in nondominated(list(points.values()), objectives)]


@pytest.mark.parametrize("name", list(OBJECTIVE_SETS))
def test_front_history_is_the_front_of_every_prefix(name):
    from explorer.pareto import FrontHistory

    objectives = OBJECTIVE_SETS[name]
    rng = np.random.default_rng(11)
    pts = random_points(rng, 120, objectives, levels=5)  # with duplicates: ties
    n = len(pts)
    hist = FrontHistory(objectives)
    hist.extend(list(range(60)), pts[:60])
    hist.extend(list(range(60, n)), pts[60:])  # in two parts: the same as in one
    changes = dict(hist.changes)
    assert len(changes) < n
    front = []
    for k in range(1, n + 1):
        if k in changes:
            front = changes[k]
        want = nondominated(pts[:k], objectives)
        assert sorted(front) == want, k
