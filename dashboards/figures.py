"""Plotly figures of a sweep: the Pareto view, parallel coordinates, hypervolume history,
training curves and the file's size breakdown. Pure functions of run records."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from explorer.pareto import (
    FrontHistory,
    IncrementalFront,
    hypervolume,
    log_objectives,
    log_reference_point,
    nondominated,
    reference_point,
    to_log,
)

from .data import RunRecord, direction

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def label(name: str) -> str:
    """An axis title: the registered metric's label and unit ("file size (bytes)")."""
    from lilnetx.metrics import METRICS

    if name not in METRICS:
        return name
    m = METRICS.get(name)
    unit = {"fraction": "", "bytes": " (bytes)", "ratio": " (x)", "bits": " (bits)",
            "macs": "", "ms": " (ms)", "count": ""}.get(m.unit, "")
    return f"{m.label}{unit}"


def _nice_ticks(lo: float, hi: float, log: bool, target: int = 6) -> list[float]:
    """Round tick values over [lo, hi]: 1-2-5 per decade on a log axis, steps of 1, 2 or 5
    times a power of ten on a linear one."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    if log and lo > 0:
        ticks = []
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            ticks += [k * 10.0 ** e for k in (1, 2, 5)]
        inside = [t for t in ticks if lo <= t <= hi]
        return inside if len(inside) >= 2 else ticks
    raw = (hi - lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(k * mag for k in (1, 2, 5, 10) if k * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def axis_units(name: str, values: list[float], log: bool) -> dict:
    """Plotly axis settings that label ticks in the metric's unit: B/KB/MB for bytes, % for
    fractions, K/M/G for MACs and counts, ms, 49x. Empty for a metric the registry does not
    know."""
    from lilnetx.metrics import METRICS, format_value

    if name not in METRICS:
        return {}
    unit = METRICS.get(name).unit
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if unit == "fraction":
        return {"tickformat": ".0%" if not vals or max(vals) - min(vals) > 0.05 else ".1%"}
    if unit == "ms":
        return {"ticksuffix": " ms"}
    if unit not in ("bytes", "macs", "count", "bits", "ratio") or not vals:
        return {}
    ticks = _nice_ticks(min(vals), max(vals), log)
    return {"tickvals": ticks, "ticktext": [format_value(unit, t) for t in ticks]}


KEY_PARAMS = ("lambda_rate", "lambda_sparsity", "lr", "lambda_l2", "epochs")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 15}, x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False},
                      template="plotly_white", height=420)
    return fig


def spans_decades(values: list[float]) -> bool:
    """Values that are all positive with max/min at least 100: draw on a log axis (a value <= 0
    would vanish from a log axis, so then the axis stays linear)."""
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return len(vals) >= 2 and min(vals) > 0 and max(vals) / min(vals) >= 100


def _has(r: RunRecord, *keys: str) -> bool:
    return all(isinstance(r.metrics.get(k), int | float) and math.isfinite(r.metrics[k])
               for k in keys)


def _values(rs: list[RunRecord], metric: str) -> np.ndarray:
    """One metric of the runs as a float64 array (Plotly sends it base64-encoded: 8 bytes a
    value instead of up to 18 characters)."""
    return np.fromiter((r.metrics[metric] for r in rs), dtype=np.float64, count=len(rs))


def _hover(r: RunRecord, metrics: tuple[str, ...]) -> str:
    """Hover text in the units people read: ``lambda_rate=1e-4``, ``88.5%``, ``5.0 KB, 49x
    smaller``, ``0.84 ms``."""
    from lilnetx.metrics import METRICS, format_metric, format_param, format_size

    params = ", ".join(f"{k}={format_param(r.params[k])}" for k in KEY_PARAMS if k in r.params)
    lines = []
    for m in metrics:
        if m not in r.metrics:
            continue
        name = METRICS.get(m).label if m in METRICS else m
        value = (format_size(r.metrics[m], r.metrics.get("dense_bytes")) if m == "size_bytes"
                 else format_metric(m, r.metrics[m]))
        lines.append(f"{name}: {value}")
    status = "" if r.status == "FINISHED" else f" ({r.status.lower()})"
    return f"<b>{r.name}</b>{status}<br>{r.method}: {params}<br>" + "<br>".join(lines)


def front_indices(runs: list[RunRecord], metrics: tuple[str, ...], *,
                  memo: dict | None = None, key=None) -> list[int]:
    """Indices of the non-dominated ``runs`` over ``metrics`` (their plotted values). With
    ``memo`` (kept by the caller between refreshes) and a ``key`` naming the subset, the front is
    updated incrementally (:class:`explorer.pareto.IncrementalFront`)."""
    objectives = {m: direction(m) for m in metrics}
    if memo is None:
        return nondominated([r.metrics for r in runs], objectives, as_searched=False)
    inc = memo.get((key, metrics))
    if inc is None:
        inc = memo[(key, metrics)] = IncrementalFront(objectives, as_searched=False)
    ids = set(inc.update({r.run_id: r.metrics for r in runs}, {r.run_id: r.rev for r in runs}))
    return [i for i, r in enumerate(runs) if r.run_id in ids]


GL_POINTS = 1000
"""A trace with more points than this is drawn with WebGL (``Scattergl``): SVG slows the
browser down past a few thousand markers."""


def pareto_figure(runs: list[RunRecord], x: str, y: str, *, color: str | None = None,
                  z: str | None = None, selected: str | None = None,
                  memo: dict | None = None) -> go.Figure:
    """Pareto view of ``runs`` over metrics ``x`` and ``y`` (and ``z`` in 3-D).

    One front per method, drawn as a step line with its points highlighted; dominated and
    failed runs faded; log axes where values span two decades; points coloured by the
    hyperparameter ``color``; every point carries its run id in ``customdata``. ``memo``: see
    :func:`front_indices`.
    """
    dims = (x, y) + ((z,) if z else ())
    usable = [r for r in runs if _has(r, *dims)]
    if not usable:
        return empty_figure("no run has " + " and ".join(dims) + " yet")
    hover_metrics = tuple(dict.fromkeys(dims + ("accuracy", "size_bytes", "latency_ms")))
    texts = {} if memo is None else memo.setdefault(("hover", hover_metrics), {})

    def hovers(rs):
        """Hover texts, formatted once per run revision (kept in ``memo``)."""
        out = []
        for r in rs:
            got = texts.get(r.run_id)
            if got is None or got[0] != r.rev:
                got = texts[r.run_id] = (r.rev, _hover(r, hover_metrics))
            out.append(got[1])
        return out

    fig = go.Figure()
    cvals, clog = None, False
    if color:
        raw = [r.params.get(color) for r in usable]
        if all(isinstance(v, int | float) for v in raw):
            clog = spans_decades(raw)
            cvals = {r.run_id: (math.log10(v) if clog else v) for r, v in zip(usable, raw,
                                                                             strict=True)}
    methods = sorted({r.method for r in usable})
    for mi, method in enumerate(methods):
        group = [r for r in usable if r.method == method]
        done = [r for r in group if r.status == "FINISHED"]
        failed = [r for r in group if r.status != "FINISHED"]
        front = set(front_indices(done, dims, memo=memo, key=method)) if done else set()
        on = [done[i] for i in sorted(front)]
        off = [r for i, r in enumerate(done) if i not in front]
        base = PALETTE[mi % len(PALETTE)]

        def scatter(rs, name, opacity, size, symbol="circle", showscale=False, line=None,
                    _base=base):
            marker = {"size": size, "opacity": opacity, "symbol": symbol,
                      "line": line or {"width": 0}}
            if cvals is not None:
                shades = np.array([cvals[r.run_id] for r in rs], dtype=np.float64)
                marker.update(color=shades, colorscale="Viridis",
                              cmin=min(cvals.values()), cmax=max(cvals.values()),
                              showscale=showscale,
                              colorbar={"title": (f"log10 {color}" if clog else color)})
            else:
                marker["color"] = _base
            common = {"name": name, "mode": "markers", "marker": marker,
                      "customdata": np.array([[r.run_id] for r in rs], dtype=object),
                      "hovertext": np.array(hovers(rs), dtype=object), "hoverinfo": "text"}
            if z:
                return go.Scatter3d(x=_values(rs, x), y=_values(rs, y), z=_values(rs, z),
                                    **common)
            kind = go.Scattergl if len(rs) > GL_POINTS else go.Scatter
            return kind(x=_values(rs, x), y=_values(rs, y), **common)

        if off:
            fig.add_trace(scatter(off, f"{method}: dominated", 0.3, 8))
        if failed:
            fig.add_trace(scatter(failed, f"{method}: failed", 0.3, 9, symbol="x"))
        if on:
            if not z:
                order = sorted(on, key=lambda r: r.metrics[x])
                # the staircase bounds the dominated region: its corners are the worse of two
                # neighbours in both metrics, reached horizontally first when x is minimized
                shape = "hv" if direction(x) == "min" else "vh"
                fig.add_trace(go.Scatter(
                    x=[r.metrics[x] for r in order], y=[r.metrics[y] for r in order],
                    mode="lines", line={"shape": shape, "color": base, "width": 2},
                    name=f"{method}: front", hoverinfo="skip"))
            fig.add_trace(scatter(on, f"{method}: front points", 1.0, 12, showscale=mi == 0,
                                  line={"width": 1.5, "color": "black"}))
    if selected:
        sel = [r for r in usable if r.run_id == selected]
        if sel and not z:
            fig.add_trace(go.Scatter(x=[sel[0].metrics[x]], y=[sel[0].metrics[y]],
                                     mode="markers", name="selected", hoverinfo="skip",
                                     marker={"size": 20, "color": "rgba(0,0,0,0)",
                                             "line": {"width": 3, "color": "#ff7f0e"}}))
    axes = {}
    for key, m in (("xaxis", x), ("yaxis", y)) + ((("zaxis", z),) if z else ()):
        vals = [r.metrics[m] for r in usable]
        log = spans_decades(vals)
        axes[key] = {"title": label(m), "type": "log" if log else "linear",
                     **axis_units(m, vals, log)}
    if z:
        fig.update_layout(scene=axes)
    else:
        fig.update_layout(**axes)
    fig.update_layout(template="plotly_white", height=520, uirevision="pareto",
                      legend={"orientation": "h", "y": -0.18}, clickmode="event",
                      margin={"l": 60, "r": 20, "t": 30, "b": 40})
    return fig


MAX_LINES = 2000
"""Parallel coordinates draw at most this many runs (10,000 lines take seconds to draw and
read as one blot): every run of a front, then an even, seeded sample of the others."""


def parcoords_sample(done: list[RunRecord], metrics: list[str],
                     max_lines: int = MAX_LINES) -> list[RunRecord]:
    """At most ``max_lines`` of ``done``, in their order: the runs on the front of their method
    over ``metrics``, then a seeded sample of the rest."""
    if len(done) <= max_lines:
        return done
    import random

    keep: set[int] = set()
    by_method: dict[str, list[int]] = {}
    for i, r in enumerate(done):
        by_method.setdefault(r.method, []).append(i)
    objectives = {m: direction(m) for m in metrics}
    for idx in by_method.values():
        front = nondominated([done[i].metrics for i in idx], objectives, as_searched=False)
        keep.update(idx[j] for j in front)
    keep = set(sorted(keep)[:max_lines])
    rest = [i for i in range(len(done)) if i not in keep]
    keep.update(random.Random(0).sample(rest, max(0, max_lines - len(keep))))
    return [done[i] for i in sorted(keep)]


def parallel_figure(runs: list[RunRecord], params: list[str], metrics: list[str], *,
                    max_lines: int = MAX_LINES) -> go.Figure:
    """Parallel coordinates from the searched hyperparameters to the objectives (finished runs;
    at most ``max_lines`` of them, see :func:`parcoords_sample`, the title says how many)."""
    done = [r for r in runs if r.status == "FINISHED" and _has(r, *metrics)]
    if not done:
        return empty_figure("no finished run yet")
    total = len(done)
    done = parcoords_sample(done, metrics, max_lines)
    dims = []
    for p in params:
        vals = [r.params.get(p) for r in done]
        if not all(isinstance(v, int | float) for v in vals):
            continue
        if spans_decades(vals):
            from lilnetx.metrics import format_param

            logs = [math.log10(v) for v in vals]
            decades = list(range(math.ceil(min(logs)), math.floor(max(logs)) + 1))
            dims.append({"label": f"log10 {p}", "values": logs, "tickvals": decades,
                         "ticktext": [format_param(10.0 ** e) for e in decades]})
        else:
            dims.append({"label": p, "values": vals})
    for m in metrics:
        vals = [r.metrics[m] for r in done]
        dims.append({"label": label(m), "values": vals, **axis_units(m, vals, False)})
    first = metrics[0]
    fig = go.Figure(go.Parcoords(
        line={"color": [r.metrics[first] for r in done], "colorscale": "Viridis",
              "showscale": True, "colorbar": {"title": first}}, dimensions=dims))
    fig.update_layout(template="plotly_white", height=380, uirevision="parcoords",
                      margin={"l": 60, "r": 60, "t": 40, "b": 20})
    if len(done) < total:
        fig.update_layout(title={"text": f"{len(done):,} of {total:,} finished runs: every "
                                         "front run and a sample of the others",
                                 "font": {"size": 12}, "x": 0.01, "y": 0.99})
    return fig


def _finish_order(r: RunRecord) -> tuple:
    """Runs in the order they finished (start order for records without an end time)."""
    return (r.end_time or r.start_time, r.start_time, r.trial)


def hypervolume_history(runs: list[RunRecord], objectives: dict[str, str], *,
                        log: bool = True, memo: dict | None = None) -> dict[str, list]:
    """Per method: (k, hypervolume of the front of the first k finished runs) for k = 1..n, in
    the order the runs finished, with one reference point shared by all methods. ``log``:
    sizes, latencies, MACs (the :func:`explorer.pareto.log_objectives`) on a log10 axis, from
    :func:`explorer.pareto.log_reference_point` (runs with such a value <= 0 left out).

    The fronts come from :class:`explorer.pareto.FrontHistory`, which keeps only the arrivals
    that change the front; a hypervolume is computed once per change. ``memo`` (a dict kept by
    the caller between refreshes): when the runs of a method extend those of the last call (same
    runs and revisions, in the same order, then new ones), only the new runs are processed."""
    metrics = list(objectives)
    done = [r for r in runs if r.status == "FINISHED" and _has(r, *metrics)]
    points = {r.run_id: r.metrics for r in done}
    use_log = log and bool(log_objectives(objectives))
    if use_log:
        logged, _ = to_log([{**r.metrics, "_id": r.run_id} for r in done], objectives)
        points = {p["_id"]: p for p in logged}
        done = [r for r in done if r.run_id in points]
    if not done:
        return {}
    ref = (log_reference_point(list(points.values()), objectives) if use_log
           else reference_point(list(points.values()), objectives))
    ref_key = tuple(sorted(ref.items()))
    memo = {} if memo is None else memo
    out: dict[str, list] = {}
    for method in sorted({r.method for r in done}):
        rs = sorted((r for r in done if r.method == method), key=_finish_order)
        sig = [(r.run_id, r.rev) for r in rs]
        key = (method, tuple(objectives.items()), use_log)
        entry = memo.get(key)
        if entry is None or entry["sig"] != sig[:len(entry["sig"])]:
            entry = {"sig": [], "hist": FrontHistory(objectives), "hv": {}}
            memo[key] = entry
        new = rs[len(entry["sig"]):]
        entry["hist"].extend([r.run_id for r in new], [points[r.run_id] for r in new])
        entry["sig"] = sig
        if entry.get("ref") != ref_key:
            entry["hv"], entry["ref"] = {}, ref_key
        hvs = entry["hv"]
        series, c, value = [], 0, 0.0
        changes = entry["hist"].changes
        for k in range(1, len(rs) + 1):
            while c < len(changes) and changes[c][0] <= k:
                if c not in hvs:
                    hvs[c] = hypervolume([points[i] for i in changes[c][1]], objectives, ref)
                value = hvs[c]
                c += 1
            series.append((k, value))
        out[method] = series
    return out


def change_points(series: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points of a step curve where its value changes, and its last point: drawn with
    ``line_shape="hv"`` they trace the same curve as every point (10,000 trials, a few hundred
    changes)."""
    out = [p for i, p in enumerate(series) if i == 0 or p[1] != series[i - 1][1]]
    if series and out[-1] is not series[-1]:
        out.append(series[-1])
    return out


def hypervolume_figure(runs: list[RunRecord], objectives: dict[str, str], *,
                       memo: dict | None = None) -> go.Figure:
    """Hypervolume by finished trial, with size-like objectives on a log10 axis (a front of
    bytes on a linear axis is dominated by its largest files)."""
    hist = hypervolume_history(runs, objectives, memo=memo)
    if not hist:
        return empty_figure("no finished run yet")
    logs = log_objectives(objectives)
    fig = go.Figure()
    for mi, (method, series) in enumerate(hist.items()):
        steps = change_points(series)
        fig.add_trace(go.Scatter(x=[s[0] for s in steps], y=[s[1] for s in steps],
                                 mode="lines+markers", name=method, line_shape="hv",
                                 line={"color": PALETTE[mi % len(PALETTE)]},
                                 hovertemplate="%{x} trials: %{y:.4g}<extra>" + method
                                 + "</extra>"))
    fig.update_layout(template="plotly_white", height=320, uirevision="hv",
                      xaxis_title="finished trials",
                      yaxis_title=(f"hypervolume, log10 {'/'.join(logs)}" if logs
                                   else "hypervolume"),
                      margin={"l": 60, "r": 20, "t": 30, "b": 40})
    return fig


def curves_figure(history: dict[str, list[tuple[int, float]]]) -> go.Figure:
    """Training curves: metric -> [(epoch, value)]."""
    if not history:
        return empty_figure("no training curves recorded")
    fig = go.Figure()
    for k, pts in history.items():
        pts = sorted(pts)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts],
                                 mode="lines+markers", name=k,
                                 yaxis="y2" if "bits" in k else "y"))
    fig.update_layout(template="plotly_white", height=300, xaxis_title="epoch",
                      yaxis2={"overlaying": "y", "side": "right", "title": "bits",
                              "tickformat": ".4~s"},
                      margin={"l": 50, "r": 50, "t": 20, "b": 40})
    return fig


def breakdown_figure(breakdown: dict[str, int]) -> go.Figure:
    """Bytes per part of the .lnx file, as one stacked horizontal bar (sizes in B/KB/MB and
    shares in the legend and hover)."""
    from lilnetx.metrics import format_value

    total = sum(breakdown.values()) or 1
    fig = go.Figure()
    for i, (k, v) in enumerate(breakdown.items()):
        fig.add_trace(go.Bar(x=[v], y=["file"], orientation="h",
                             name=f"{k} ({format_value('bytes', v)}, {v / total:.0%})",
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertext=f"{k}: {format_value('bytes', v)} ({v:,} bytes, "
                                       f"{v / total:.1%})", hoverinfo="text"))
    fig.update_layout(barmode="stack", template="plotly_white", height=170,
                      margin={"l": 40, "r": 20, "t": 10, "b": 20}, xaxis_title="bytes",
                      legend={"orientation": "h", "y": -0.6})
    return fig
