"""The Dash explorer without a browser: figures, MLflow loading, the callbacks of
``create_app`` called directly, registry export and the exported pyfunc in a fresh process.

The sweep-backed tests share one real sweep (Ray + Optuna + MLflow on sqlite, digits, LeNet-5,
1 epoch, 4 trials and one diverging trial) built once per process by tests/_dashboard_sweep.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from _dashboard_sweep import EXPERIMENT, get_sweep

from dashboards import figures
from dashboards.data import (
    DashboardDataError,
    RunRecord,
    direction,
    list_experiments,
    load_experiment,
    objectives_of,
)

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
LILNETX = str(Path(sys.executable).with_name("lilnetx"))
DOWN = "http://127.0.0.1:9"


def real(f):
    """Marks a test that needs the real sweep."""
    return pytest.mark.slow(pytest.mark.sweep(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return get_sweep(tmp_path_factory.mktemp("dash-sweep"))


@pytest.fixture(scope="module")
def exp(sweep):
    return load_experiment(sweep.uri, EXPERIMENT)


@pytest.fixture(scope="module")
def callbacks(sweep):
    from dashboards.app import create_app

    app = create_app(sweep.uri, EXPERIMENT)
    fns = {v["callback"].__wrapped__.__name__: v["callback"].__wrapped__
           for v in app.callback_map.values()}
    assert {"refresh", "overview", "select", "details", "export"} <= set(fns)
    return fns


# ---------------------------------------------------------------- helpers


def rec(i: int, method: str = "lilnetx", status: str = "FINISHED", params=None,
        **metrics) -> RunRecord:
    return RunRecord(run_id=f"{i:032x}", name=f"r{i}", status=status, sweep="s", method=method,
                     trial=i, start_time=1000 + i, params=params or {}, metrics=metrics)


def brute_front(runs: list[RunRecord], dims) -> set[str]:
    """Run ids no other run dominates on the displayed metrics ``dims`` (per the metric registry)."""
    def at_least(a, b, m):
        return a >= b if direction(m) == "max" else a <= b

    def dominates(q, p):
        return (all(at_least(q.metrics[m], p.metrics[m], m) for m in dims)
                and any(q.metrics[m] != p.metrics[m] for m in dims))

    return {p.run_id for p in runs if not any(dominates(q, p) for q in runs)}


def traces(fig: go.Figure, suffix: str) -> list:
    return [t for t in fig.data if (t.name or "").endswith(suffix)]


def ids(trs) -> set[str]:
    return {c[0] for t in trs for c in (t.customdata if t.customdata is not None else [])}


def walk(node):
    """Every Dash component of a layout tree (lists, components and their children)."""
    if isinstance(node, list | tuple):
        for n in node:
            yield from walk(n)
    elif node is not None and not isinstance(node, str | int | float):
        yield node
        yield from walk(getattr(node, "children", None))


def text(node) -> str:
    out = []

    def rec_(n):
        if isinstance(n, str | int | float):
            out.append(str(n))
        elif isinstance(n, list | tuple):
            for x in n:
                rec_(x)
        elif n is not None:
            rec_(getattr(n, "children", None))

    rec_(node)
    return " ".join(out)


def by_id(node, id_: str):
    found = [c for c in walk(node) if getattr(c, "id", None) == id_]
    return found[0] if found else None


def synthetic(n: int = 60, seed: int = 0) -> list[RunRecord]:
    """Two methods with a real tradeoff, one failed run with partial metrics."""
    rng = random.Random(seed)
    runs = []
    for i in range(n):
        method = "lilnetx" if i % 2 else "dense"
        lam = 10 ** rng.uniform(-4, 0)
        size = 500 * 10 ** rng.uniform(0, 2.5)  # spans > 100x
        acc = min(0.99, 0.5 + 0.1 * math.log10(size) + rng.uniform(-0.1, 0.1))
        runs.append(rec(i, method, params={"lambda_rate": lam, "lr": 0.01 * (1 + i % 3)},
                        accuracy=acc, val_accuracy=acc + rng.uniform(-0.05, 0.05),
                        size_bytes=size, latency_ms=rng.uniform(0.1, 0.5),
                        compression_ratio=85544 / size, flops=rng.randrange(1000, 2000)))
    runs.append(rec(n, "lilnetx", "FAILED", params={"lambda_rate": 1.0, "lr": 0.01},
                    accuracy=0.1, val_accuracy=0.1, size_bytes=1000.0, latency_ms=0.2))
    return runs


# ---------------------------------------------------------------- figures (synthetic)


@pytest.mark.parametrize("dims", [("size_bytes", "val_accuracy"), ("latency_ms", "flops"),
                                  ("compression_ratio", "val_accuracy"),
                                  ("size_bytes", "val_accuracy", "latency_ms")])
def test_pareto_front_per_method_is_brute_force_nondominated(dims):
    runs = synthetic()
    x, y, *z = dims
    fig = figures.pareto_figure(runs, x, y, z=z[0] if z else None)
    for method in ("dense", "lilnetx"):
        done = [r for r in runs if r.method == method and r.status == "FINISHED"]
        front = ids(traces(fig, f"{method}: front points"))
        assert front == brute_front(done, dims), method
        assert front and len(front) < len(done)
    # every run with these metrics appears exactly once, carrying its run id
    plotted = [c[0] for t in fig.data if t.customdata is not None for c in t.customdata]
    assert sorted(plotted) == sorted(r.run_id for r in runs if set(dims) <= set(r.metrics))


def test_pareto_front_on_test_accuracy_axis_is_the_front_of_the_plotted_points():
    # a: better test accuracy, worse validation accuracy, same size: a dominates b as plotted
    a = rec(1, accuracy=0.9, val_accuracy=0.5, size_bytes=100.0)
    b = rec(2, accuracy=0.8, val_accuracy=0.9, size_bytes=100.0)
    fig = figures.pareto_figure([a, b], "size_bytes", "accuracy")
    assert ids(traces(fig, "front points")) == brute_front([a, b], ("size_bytes", "accuracy"))


def test_pareto_faded_traces_log_axes_and_colour():
    runs = synthetic()
    fig = figures.pareto_figure(runs, "size_bytes", "val_accuracy")
    for suffix in ("dominated", "failed"):
        trs = traces(fig, suffix)
        assert trs, suffix
        assert all(t.marker.opacity < 1 for t in trs), suffix
    assert all(t.marker.opacity == 1 for t in traces(fig, "front points"))
    assert ids(traces(fig, "lilnetx: failed")) == {runs[-1].run_id}
    # the front line: sorted by x, a staircase bounding the dominated region
    (line,) = traces(fig, "lilnetx: front")
    assert list(line.x) == sorted(line.x) and line.line.shape == "hv"  # x minimized
    fig_max = figures.pareto_figure(runs, "compression_ratio", "val_accuracy")
    assert traces(fig_max, "lilnetx: front")[0].line.shape == "vh"  # x maximized
    # size spans > 100x: log; accuracy does not
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "linear"
    narrow = [r for r in runs if 500 <= r.metrics["size_bytes"] < 40000]
    assert max(r.metrics["size_bytes"] for r in narrow) / min(
        r.metrics["size_bytes"] for r in narrow) < 100
    assert figures.pareto_figure(narrow, "size_bytes", "val_accuracy").layout.xaxis.type \
        == "linear"
    assert figures.spans_decades([1, 100]) and not figures.spans_decades([1, 99.9])
    # colour by a hyperparameter spanning four decades: a log10 colour scale on every marker
    fig = figures.pareto_figure(runs, "size_bytes", "val_accuracy", color="lambda_rate")
    markers = [t for t in fig.data if t.customdata is not None]
    assert all(t.marker.colorscale for t in markers)
    shown = [t for t in markers if t.marker.showscale]
    assert len(shown) == 1 and "log10 lambda_rate" in shown[0].marker.colorbar.title.text
    by_run = {r.run_id: r for r in runs}
    for t in markers:
        for c, v in zip(t.customdata, t.marker.color, strict=True):
            assert v == pytest.approx(math.log10(by_run[c[0]].params["lambda_rate"]))
    # a parameter within one decade is used as is
    fig = figures.pareto_figure(runs, "size_bytes", "val_accuracy", color="lr")
    vals = {v for t in fig.data if t.customdata is not None for v in t.marker.color}
    assert vals == {0.01, 0.02, 0.03}


def test_log_axis_only_when_every_value_is_positive():
    runs = [rec(1, slice_sparsity=0.0, val_accuracy=0.9),
            rec(2, slice_sparsity=0.001, val_accuracy=0.8),
            rec(3, slice_sparsity=0.5, val_accuracy=0.7)]
    fig = figures.pareto_figure(runs, "slice_sparsity", "val_accuracy")
    assert len(ids(traces(fig, "front points"))) == 3  # all three are on the front
    assert fig.layout.xaxis.type == "linear"


def test_pareto_3d_and_selection_and_missing_metric():
    runs = synthetic()
    fig = figures.pareto_figure(runs, "size_bytes", "val_accuracy", z="latency_ms")
    assert fig.data and all(isinstance(t, go.Scatter3d) for t in fig.data)
    assert fig.layout.scene.xaxis.type == "log"
    assert fig.layout.scene.zaxis.title.text == figures.label("latency_ms")
    fig = figures.pareto_figure(runs, "size_bytes", "val_accuracy", selected=runs[3].run_id)
    sel = traces(fig, "selected")
    assert len(sel) == 1 and sel[0].x[0] == runs[3].metrics["size_bytes"]
    empty = figures.pareto_figure(runs, "size_bytes", "bits_estimate")
    assert not empty.data and "bits_estimate" in empty.layout.annotations[0].text


def test_hypervolume_history_non_decreasing_per_method():
    runs = synthetic(80, seed=3)
    objectives = {"val_accuracy": "max", "size_bytes": "min"}
    hist = figures.hypervolume_history(runs, objectives, log=False)
    assert set(hist) == {"dense", "lilnetx"}
    from explorer.pareto import (
        hypervolume,
        log_hypervolume,
        log_reference_point,
        reference_point,
        to_log,
    )

    done = [r for r in runs if r.status == "FINISHED"]
    ref = reference_point([r.metrics for r in done], objectives)
    for method, series in hist.items():
        mine = [r for r in done if r.method == method]
        assert [s[0] for s in series] == list(range(1, len(mine) + 1))
        hv = [s[1] for s in series]
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(hv)), method
        assert hv[-1] > hv[0] > 0
        assert hv[-1] == pytest.approx(hypervolume([r.metrics for r in mine], objectives, ref))
    # the default: size on a log10 axis, from one log reference shared by the methods
    logged = figures.hypervolume_history(runs, objectives)
    lref = log_reference_point(to_log([r.metrics for r in done], objectives)[0], objectives)
    for method, series in logged.items():
        mine = [r.metrics for r in done if r.method == method]
        assert series[-1][1] == pytest.approx(log_hypervolume(mine, objectives, lref))
        assert series[-1][1] != pytest.approx(hist[method][-1][1])
    fig = figures.hypervolume_figure(runs, objectives)
    assert [t.name for t in fig.data] == ["dense", "lilnetx"]
    assert "log10 size_bytes" in fig.layout.yaxis.title.text
    assert figures.hypervolume_history([runs[-1]], objectives) == {}


def test_change_points_trace_the_same_steps():
    series = [(1, 0.5), (2, 0.5), (3, 0.7), (4, 0.7), (5, 0.7), (6, 0.9)]
    assert figures.change_points(series) == [(1, 0.5), (3, 0.7), (6, 0.9)]
    assert figures.change_points(series[:5]) == [(1, 0.5), (3, 0.7), (5, 0.7)]
    assert figures.change_points([]) == []
    # every k of the full series reads the value of the last change point at or before it
    steps = figures.change_points(series)
    for k, v in series:
        assert [sv for sk, sv in steps if sk <= k][-1] == v


def test_parallel_coordinates_sample_keeps_every_front_run():
    runs = synthetic()
    done = [r for r in runs if r.status == "FINISHED"]
    metrics = ["val_accuracy", "size_bytes"]
    few = figures.parcoords_sample(done, metrics, max_lines=len(done) - 2)
    assert len(few) == len(done) - 2 and few == [r for r in done if r in few]  # order kept
    for method in {r.method for r in done}:
        mine = [r for r in done if r.method == method]
        front = {mine[i].run_id for i in figures.front_indices(mine, tuple(metrics))}
        assert front <= {r.run_id for r in few}
    assert figures.parcoords_sample(done, metrics, max_lines=len(done)) == done
    fig = figures.parallel_figure(runs, ["lr"], metrics, max_lines=len(done) - 2)
    assert len(fig.data[0].dimensions[0]["values"]) == len(done) - 2
    assert f"{len(done) - 2:,} of {len(done):,} finished runs" in fig.layout.title.text


def test_parallel_and_breakdown_figures():
    runs = synthetic()
    fig = figures.parallel_figure(runs, ["lambda_rate", "lr"], ["val_accuracy", "size_bytes"])
    (pc,) = fig.data
    assert isinstance(pc, go.Parcoords)
    labels = [d.label for d in pc.dimensions]
    assert labels == ["log10 lambda_rate", "lr", figures.label("val_accuracy"),
                      figures.label("size_bytes")]
    done = [r for r in runs if r.status == "FINISHED"]
    assert list(pc.dimensions[3]["values"]) == [r.metrics["size_bytes"] for r in done]
    assert not figures.parallel_figure(runs[-1:], ["lr"], ["val_accuracy"]).data
    parts = {"latent payload": 900, "probability tables": 60, "header": 40}
    fig = figures.breakdown_figure(parts)
    assert fig.layout.barmode == "stack"
    assert [t.x[0] for t in fig.data] == [900, 60, 40]
    assert all(k in t.name for k, t in zip(parts, fig.data, strict=True))


# ---------------------------------------------------------------- data


@real
def test_load_experiment(sweep, exp):
    assert exp.name == EXPERIMENT
    assert len(exp.runs) == 5
    assert [r.start_time for r in exp.runs] == sorted(r.start_time for r in exp.runs)
    assert exp.sweeps == [sweep.sweep, sweep.failed_sweep]
    assert exp.objectives == {s: {"accuracy": "max", "size_bytes": "min"} for s in exp.sweeps}
    assert objectives_of(exp, None) == {"val_accuracy": "max", "size_bytes": "min"}
    ok = [r for r in exp.runs if r.status == "FINISHED"]
    assert {r.run_id for r in ok} == {r.info.run_id for r in sweep.finished}
    for r in ok:
        assert r.sweep == sweep.sweep and r.method == "lilnetx" and r.trial in range(4)
        assert isinstance(r.params["lambda_rate"], float) and r.params["epochs"] == 1
        assert r.params["model"] == "lenet5"
        assert {"accuracy", "val_accuracy", "size_bytes", "latency_ms"} <= set(r.metrics)
    (bad,) = [r for r in exp.runs if r.status == "FAILED"]
    assert bad.sweep == sweep.failed_sweep and bad.params["lr"] == 1e30
    assert "loss is" in bad.error
    assert EXPERIMENT in list_experiments(sweep.uri)


@real
def test_load_experiment_errors(sweep):
    with pytest.raises(DashboardDataError, match="'nope' does not exist"):
        load_experiment(sweep.uri, "nope")
    for call in (lambda: load_experiment(DOWN, "x"), lambda: list_experiments(DOWN)):
        with pytest.raises(DashboardDataError) as e:
            call()
        assert DOWN in str(e.value) and "unreachable" in str(e.value)


@pytest.fixture(scope="module")
def empty_experiment(sweep):
    from explorer import tracking

    tracking.ensure_experiment(sweep.uri, "empty")
    return "empty"


@real
def test_load_empty_experiment_has_no_runs(sweep, empty_experiment):
    # not an error: a sweep that has just started has no runs yet (the page says so, see
    # test_refresh_messages); an unknown experiment is one
    exp = load_experiment(sweep.uri, empty_experiment)
    assert exp.runs == [] and exp.sweeps == []
    with pytest.raises(DashboardDataError, match="does not exist"):
        load_experiment(sweep.uri, "no-such-experiment")


# ---------------------------------------------------------------- callbacks


def refresh_args(exp_name=EXPERIMENT, sweep="all", x="size_bytes", y="accuracy", color="",
                 third="", selected=None, methods=None, method_opts=None, rendered=None):
    return (None, exp_name, sweep, methods or [], x, y, color, third, selected, method_opts,
            rendered)


@real
def test_refresh_real_experiment(sweep, exp, callbacks):
    refresh = callbacks["refresh"]
    out = refresh(*refresh_args(x="latency_ms", y="val_accuracy", color="lambda_rate"))
    pareto, status, summary, sweeps, mopts, mvals, copts, rendered = out
    # the other figures follow from what the Pareto view put in `rendered`
    parcoords, hv, drawn = callbacks["overview"](json.loads(json.dumps(rendered)), None)
    assert drawn == {k: rendered[k] for k in ("parcoords", "hv")}
    assert status == "" and summary == "5 runs: 4 finished, 0 running, 1 failed"
    assert [o["value"] for o in sweeps] == ["all", sweep.sweep, sweep.failed_sweep]
    assert mopts == [{"label": "lilnetx", "value": "lilnetx"}] and mvals == ["lilnetx"]
    assert {"lambda_rate", "lambda_sparsity"} <= {o["value"] for o in copts}
    done = [r for r in exp.runs if r.status == "FINISHED"]
    assert ids(traces(pareto, "front points")) == brute_front(done, ("latency_ms",
                                                                     "val_accuracy"))
    assert ids([t for t in pareto.data if t.customdata is not None]) == {r.run_id for r in done}
    assert all(t.marker.opacity < 1 for t in traces(pareto, "dominated"))
    assert isinstance(parcoords.data[0], go.Parcoords)
    assert len(parcoords.data[0].dimensions[0]["values"]) == 4
    # the hypervolume curve: its change points and its last point, drawn as steps
    hist, ks = list(hv.data[0].y), list(hv.data[0].x)
    assert hv.data[0].line.shape == "hv" and ks[0] == 1 and ks[-1] == 4
    assert all(b > a for a, b in itertools.pairwise(ks))
    assert all(b >= a for a, b in itertools.pairwise(hist))
    # one sweep, the selected run ringed, a 3-D view
    out = refresh(*refresh_args(sweep=sweep.sweep, selected=done[0].run_id))
    assert out[2] == "4 runs: 4 finished, 0 running, 0 failed"
    assert len(traces(out[0], "selected")) == 1
    out = refresh(*refresh_args(third="latency_ms"))
    assert all(isinstance(t, go.Scatter3d) for t in out[0].data)
    # the failed sweep alone: messages, no exception
    out = refresh(*refresh_args(sweep=sweep.failed_sweep))
    assert out[2] == "1 runs: 0 finished, 0 running, 1 failed"
    assert "no run has" in out[0].layout.annotations[0].text


@real
def test_refresh_rebuilds_only_what_changed(sweep, exp, callbacks):
    from dash import no_update
    from dash.exceptions import PreventUpdate

    refresh = callbacks["refresh"]
    args = {"x": "size_bytes", "y": "val_accuracy", "methods": ["lilnetx"],
            "method_opts": [{"label": "lilnetx", "value": "lilnetx"}]}
    first = refresh(*refresh_args(**args))
    overview = callbacks["overview"]
    assert first[0] is not no_update
    parcoords, hv, drawn = overview(first[-1], None)
    assert parcoords is not no_update and hv is not no_update
    with pytest.raises(PreventUpdate):  # drawn already
        overview(first[-1], drawn)
    # the next poll with nothing new: the callback stops before building anything
    with pytest.raises(PreventUpdate):
        refresh(*refresh_args(**args, rendered=first[-1]))
    # a selection redraws the Pareto view only; the other figures stay as drawn
    done = [r for r in exp.runs if r.status == "FINISHED"]
    out = refresh(*refresh_args(**args, selected=done[0].run_id, rendered=first[-1]))
    assert out[0] is not no_update and len(traces(out[0], "selected")) == 1
    with pytest.raises(PreventUpdate):  # the other figures are not drawn again
        overview(out[-1], drawn)
    # another axis: both redrawn
    out = refresh(*refresh_args(**{**args, "x": "latency_ms"}, rendered=out[-1]))
    parcoords, hv, _ = overview(out[-1], drawn)
    assert parcoords is not no_update and hv is not no_update


@real
def test_pages_share_figures_and_refresh_concurrently(sweep):
    """Pages polling at once (Dash serves each in a thread) share one build per view: the
    incremental fronts they use are not thread-safe, and a second page of the same view gets
    the first page's figures."""
    from concurrent.futures import ThreadPoolExecutor

    from dashboards.app import create_app

    app = create_app(sweep.uri, EXPERIMENT)
    fns = {v["callback"].__wrapped__.__name__: v["callback"].__wrapped__
           for v in app.callback_map.values()}
    refresh, overview = fns["refresh"], fns["overview"]
    views = [("size_bytes", "val_accuracy"), ("latency_ms", "accuracy")] * 4
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda v: refresh(*refresh_args(x=v[0], y=v[1])), views))
        overs = list(pool.map(lambda o: overview(o[-1], None), outs))
    assert app.figure_cache.built == 2 * 3  # three figures per view, built once
    assert outs[0][0] is outs[2][0] and outs[0][0] is not outs[1][0]
    assert overs[0][0] is overs[2][0] and overs[0][1] is not overs[1][1]
    assert all(o[1] == "" for o in outs)


@real
def test_refresh_messages(sweep, callbacks, empty_experiment):
    from dashboards.app import create_app

    refresh = callbacks["refresh"]
    out = refresh(*refresh_args(exp_name="nope"))
    assert "'nope' does not exist" in out[1] and out[2] == ""
    assert "does not exist" in out[0].layout.annotations[0].text
    parcoords, hv, drawn = callbacks["overview"](out[-1], None)
    assert "does not exist" in parcoords.layout.annotations[0].text
    assert "does not exist" in hv.layout.annotations[0].text
    out = refresh(*refresh_args(exp_name=empty_experiment))
    assert out[1] == "experiment 'empty' has no runs yet"
    out = refresh(*refresh_args(exp_name=None))
    assert "no experiment yet" in out[1]
    app = create_app(DOWN, "x")
    down = next(v["callback"].__wrapped__ for v in app.callback_map.values()
                if v["callback"].__wrapped__.__name__ == "refresh")
    out = down(*refresh_args(exp_name="x"))
    assert "unreachable" in out[1] and DOWN in out[1]


@real
def test_select_and_details(sweep, exp, callbacks):
    from dash import no_update

    select, details = callbacks["select"], callbacks["details"]
    run = sweep.finished[0]
    rid = run.info.run_id
    assert select({"points": [{"x": 1, "y": 2, "customdata": [rid]}]}) == rid
    assert select(None) is no_update and select({"points": [{"x": 1}]}) is no_update
    parts = details(rid)
    assert text(by_id(parts, "details-title")) == run.info.run_name
    layers = by_id(parts, "details-layers")
    from explorer import tracking

    local = tracking.client(sweep.uri).download_artifacts(rid, "layers.json",
                                                          str(sweep.root / "dl"))
    with open(local) as f:
        expected = json.load(f)
    assert [r["layer"] for r in layers.data] == [r["name"] for r in expected]
    assert len(layers.data) == 5  # LeNet-5: conv1, conv2, fc1, fc2, fc3
    graphs = [c for c in walk(parts) if type(c).__name__ == "Graph"]
    bars = [g.figure for g in graphs if g.figure.data and g.figure.data[0].type == "bar"]
    assert len(bars) == 1
    size = int(run.data.metrics["size_bytes"])
    assert sum(t.x[0] for t in bars[0].data) == size
    assert f"({size:,} bytes)" in text(parts) and "smaller" in text(by_id(parts, "details-file"))
    assert "%" in text(by_id(parts, "card-accuracy")) and "B" in text(by_id(parts, "card-size"))
    assert [r["kind"] for r in layers.data] == ["conv5x5", "conv5x5", "linear", "linear", "linear"]
    assert by_id(parts, "export-button") is not None and by_id(parts, "no-model") is None
    # the failed run: its error and a message instead of the model file
    bad = sweep.failed[0]
    parts = details(bad.info.run_id)
    assert text(by_id(parts, "details-title")) == bad.info.run_name
    assert "no model file" in text(by_id(parts, "no-model"))
    assert "loss is" in text(parts) and by_id(parts, "details-layers") is None
    assert "Click a point" in text(details(None))
    assert "cannot show run" in text(details("0" * 32))


def registered(uri) -> set[str]:
    from explorer import tracking

    return {m.name for m in tracking.client(uri).search_registered_models()}


@real
def test_export_rejects_bad_input_and_registers_nothing(sweep, callbacks):
    from dash import no_update

    export = callbacks["export"]
    rid = sweep.finished[0].info.run_id
    before = registered(sweep.uri)
    for name, alias, what in (("bad/name", "champion", "bad/name"), ("", "champion", "''"),
                              ("ok_name", "v1", "v1"), ("a" * 101, "champion", "a" * 101)):
        out = export(1, name, alias, rid)
        assert out.id == "export-error", name
        assert out.children.startswith("error: invalid") and what in out.children
    out = export(1, "no_model", "champion", sweep.failed[0].info.run_id)
    assert out.id == "export-error" and "has no model.lnx" in out.children
    assert export(0, "x", "champion", rid) is no_update
    assert export(1, "x", "champion", None) is no_update
    assert registered(sweep.uri) == before


@pytest.fixture(scope="module")
def cli_export(sweep, tmp_path_factory, subprocess_env):
    """``lilnetx export RUN --name dash_cli --json`` started in the background (it spends ~15 s
    in MLflow's requirement inference), so it overlaps the in-process export and predict tests;
    test_cli_export_json collects it."""
    run = min(sweep.finished, key=lambda r: r.data.metrics["accuracy"])
    cwd = tmp_path_factory.mktemp("cli-export")
    env = {**subprocess_env, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(cwd / "out", "w") as out, open(cwd / "err", "w") as err:
        proc = subprocess.Popen([LILNETX, "export", run.info.run_id, "--name", "dash_cli",
                                 "--tracking-uri", sweep.uri, "--json"],
                                cwd=cwd, env=env, stdout=out, stderr=err)
    yield run, proc, cwd
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def exported(sweep, callbacks, cli_export):
    """The best finished run exported through the page's export callback."""
    run = max(sweep.finished, key=lambda r: r.data.metrics["accuracy"])
    out = callbacks["export"](1, " dash_lenet5 ", "champion", run.info.run_id)
    return "dash_lenet5", run, out


@real
def test_export_registers_version_with_alias_and_tags(sweep, exported):
    from explorer import tracking

    name, run, out = exported
    assert text(by_id(out, "export-uri")) == f"models:/{name}@champion"
    mv = tracking.client(sweep.uri).get_model_version_by_alias(name, "champion")
    assert str(mv.version) == "1"
    assert set(mv.tags) == {"accuracy", "size_bytes", "latency_ms", "source_run"}
    assert mv.tags["source_run"] == run.info.run_id
    for k in ("accuracy", "size_bytes", "latency_ms"):
        assert float(mv.tags[k]) == run.data.metrics[k]


PREDICT = """
import json, sys
import numpy as np
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(np.load(sys.argv[2]))
np.save(sys.argv[3], out)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("explorer", "dashboards", "ray",
                                                              "optuna"))
print(json.dumps({"type": type(out).__module__ + "." + type(out).__name__, "heavy": heavy}))
"""


@real
def test_registered_model_predicts_the_lnx_logits_in_a_fresh_process(
        sweep, exported, tmp_path, digits_batch, subprocess_env):
    import torch

    import lilnetx
    from explorer import tracking

    name, run, _ = exported
    x = digits_batch[0][:16].numpy().astype(np.float32)
    assert x.shape == (16, 1, 8, 8)
    np.save(tmp_path / "x.npy", x)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**subprocess_env, "MLFLOW_TRACKING_URI": sweep.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", PREDICT, f"models:/{name}@champion",
                          str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info == {"type": "numpy.ndarray", "heavy": []}
    got = np.load(tmp_path / "y.npy")
    local = tracking.client(sweep.uri).download_artifacts(run.info.run_id, "model.lnx",
                                                          str(tmp_path))
    with torch.inference_mode():
        want = lilnetx.load(local).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (16, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- command line


def _one_error_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert proc.stdout == ""


@real
def test_cli_export_json(sweep, cli_export):
    run, proc, cwd = cli_export
    rid = run.info.run_id
    try:
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = (cwd / "out").read_text(), (cwd / "err").read_text()
    assert code == 0, stderr[-3000:]
    doc = json.loads(stdout)
    assert doc["name"] == "dash_cli" and doc["alias"] == "champion"
    assert doc["uri"] == "models:/dash_cli@champion" and doc["run_id"] == rid
    assert doc["tags"]["source_run"] == rid
    from explorer import tracking

    mv = tracking.client(sweep.uri).get_model_version_by_alias("dash_cli", "champion")
    assert str(mv.version) == doc["version"] and mv.tags["source_run"] == rid


@real
def test_cli_bad_input_exits_2_with_one_error_line(sweep, tmp_path, subprocess_env, capsys):
    """Two real command lines (in parallel: each start imports torch), the rest in process."""
    rid = sweep.finished[0].info.run_id
    env = {**subprocess_env, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmds = {
        "name": ([LILNETX, "export", rid, "--name", "bad/name", "--tracking-uri", sweep.uri,
                  "--json"], ("'bad/name'", "letters, digits")),
        "port": ([LILNETX, "dashboard", "--port", "70000", "--tracking-uri", sweep.uri],
                 ("--port", "70000", "1..65535")),
    }
    procs = {k: subprocess.Popen(c, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
             for k, (c, _) in cmds.items()}
    for k, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        _one_error_line(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr),
                        *cmds[k][1])
    from explorer.cli import main

    bad = sweep.failed[0].info.run_id
    for argv, needles in (
            (["export", rid, "--name", "", "--json"], ("invalid model name ''",)),
            (["export", rid, "--name", "ok", "--alias", "v2"], ("invalid alias 'v2'",)),
            (["export", "0" * 32, "--name", "x"], ("unknown run id",)),
            (["export", bad, "--name", "x"], ("has no model.lnx",)),
            (["dashboard", "--port", "0"], ("--port", "1..65535")),
            (["dashboard", "--port", "8050", "--tracking-uri", DOWN], (DOWN, "unreachable"))):
        if "--tracking-uri" not in argv:
            argv = argv + ["--tracking-uri", sweep.uri]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        _one_error_line(subprocess.CompletedProcess(argv, code, out, err), *needles)
    assert not {"x", "ok"} & registered(sweep.uri)
