"""Plotly figures of a sweep: the Pareto view, parallel coordinates, hypervolume history,
training curves and the file's size breakdown. Pure functions of run records."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from explorer.pareto import (
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


def _hover(r: RunRecord, metrics: tuple[str, ...]) -> str:
    params = ", ".join(f"{k}={r.params[k]:.3g}" if isinstance(r.params[k], float)
                       else f"{k}={r.params[k]}" for k in KEY_PARAMS if k in r.params)
    vals = "<br>".join(f"{m}: {r.metrics[m]:.4g}" for m in metrics if m in r.metrics)
    status = "" if r.status == "FINISHED" else f" ({r.status.lower()})"
    return f"<b>{r.name}</b>{status}<br>{r.method}: {params}<br>{vals}"


def front_indices(runs: list[RunRecord], metrics: tuple[str, ...]) -> list[int]:
    points = [r.metrics for r in runs]
    return nondominated(points, {m: direction(m) for m in metrics}, as_searched=False)


def pareto_figure(runs: list[RunRecord], x: str, y: str, *, color: str | None = None,
                  z: str | None = None, selected: str | None = None) -> go.Figure:
    """Pareto view of ``runs`` over metrics ``x`` and ``y`` (and ``z`` in 3-D).

    One front per method, drawn as a step line with its points highlighted; dominated and
    failed runs faded; log axes where values span two decades; points coloured by the
    hyperparameter ``color``; every point carries its run id in ``customdata``.
    """
    dims = (x, y) + ((z,) if z else ())
    usable = [r for r in runs if _has(r, *dims)]
    if not usable:
        return empty_figure("no run has " + " and ".join(dims) + " yet")
    hover_metrics = tuple(dict.fromkeys(dims + ("accuracy", "size_bytes", "latency_ms")))
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
        front = set(front_indices(done, dims)) if done else set()
        on = [done[i] for i in sorted(front)]
        off = [r for i, r in enumerate(done) if i not in front]
        base = PALETTE[mi % len(PALETTE)]

        def scatter(rs, name, opacity, size, symbol="circle", showscale=False, line=None,
                    _base=base):
            marker = {"size": size, "opacity": opacity, "symbol": symbol,
                      "line": line or {"width": 0}}
            if cvals is not None:
                marker.update(color=[cvals[r.run_id] for r in rs], colorscale="Viridis",
                              cmin=min(cvals.values()), cmax=max(cvals.values()),
                              showscale=showscale,
                              colorbar={"title": (f"log10 {color}" if clog else color)})
            else:
                marker["color"] = _base
            common = {"name": name, "mode": "markers", "marker": marker,
                      "customdata": [[r.run_id] for r in rs],
                      "hovertext": [_hover(r, hover_metrics) for r in rs], "hoverinfo": "text"}
            if z:
                return go.Scatter3d(x=[r.metrics[x] for r in rs], y=[r.metrics[y] for r in rs],
                                    z=[r.metrics[z] for r in rs], **common)
            return go.Scatter(x=[r.metrics[x] for r in rs], y=[r.metrics[y] for r in rs],
                              **common)

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
        axes[key] = {"title": label(m),
                     "type": "log" if spans_decades([r.metrics[m] for r in usable]) else "linear"}
    if z:
        fig.update_layout(scene=axes)
    else:
        fig.update_layout(**axes)
    fig.update_layout(template="plotly_white", height=520, uirevision="pareto",
                      legend={"orientation": "h", "y": -0.18}, clickmode="event",
                      margin={"l": 60, "r": 20, "t": 30, "b": 40})
    return fig


def parallel_figure(runs: list[RunRecord], params: list[str], metrics: list[str]) -> go.Figure:
    """Parallel coordinates from the searched hyperparameters to the objectives (finished runs)."""
    done = [r for r in runs if r.status == "FINISHED" and _has(r, *metrics)]
    if not done:
        return empty_figure("no finished run yet")
    dims = []
    for p in params:
        vals = [r.params.get(p) for r in done]
        if not all(isinstance(v, int | float) for v in vals):
            continue
        if spans_decades(vals):
            dims.append({"label": f"log10 {p}", "values": [math.log10(v) for v in vals]})
        else:
            dims.append({"label": p, "values": vals})
    for m in metrics:
        dims.append({"label": label(m), "values": [r.metrics[m] for r in done]})
    first = metrics[0]
    fig = go.Figure(go.Parcoords(
        line={"color": [r.metrics[first] for r in done], "colorscale": "Viridis",
              "showscale": True, "colorbar": {"title": first}}, dimensions=dims))
    fig.update_layout(template="plotly_white", height=380, uirevision="parcoords",
                      margin={"l": 60, "r": 60, "t": 40, "b": 20})
    return fig


def hypervolume_history(runs: list[RunRecord], objectives: dict[str, str], *,
                        log: bool = True) -> dict[str, list]:
    """Per method: (trial number, hypervolume of the front of the finished runs so far), with
    one reference point shared by all methods. ``log``: sizes, latencies, MACs (the
    :func:`explorer.pareto.log_objectives`) on a log10 axis, from
    :func:`explorer.pareto.log_reference_point` (runs with such a value <= 0 left out)."""
    metrics = list(objectives)
    done = [r for r in runs if r.status == "FINISHED" and _has(r, *metrics)]
    points = {id(r): r.metrics for r in done}
    if log and log_objectives(objectives):
        logged, _ = to_log([{**r.metrics, "_id": id(r)} for r in done], objectives)
        points = {p["_id"]: p for p in logged}
        done = [r for r in done if id(r) in points]
    if not done:
        return {}
    ref = (log_reference_point(list(points.values()), objectives)
           if log and log_objectives(objectives)
           else reference_point([r.metrics for r in done], objectives))
    out: dict[str, list] = {}
    for method in sorted({r.method for r in done}):
        rs = sorted((r for r in done if r.method == method), key=lambda r: (r.start_time, r.trial))
        series, front = [], []
        for k, r in enumerate(rs):
            cand = front + [points[id(r)]]
            front = [cand[i] for i in nondominated(cand, objectives)]
            series.append((k + 1, hypervolume(front, objectives, ref)))
        out[method] = series
    return out


def hypervolume_figure(runs: list[RunRecord], objectives: dict[str, str]) -> go.Figure:
    """Hypervolume by finished trial, with size-like objectives on a log10 axis (a front of
    bytes on a linear axis is dominated by its largest files)."""
    hist = hypervolume_history(runs, objectives)
    if not hist:
        return empty_figure("no finished run yet")
    logs = log_objectives(objectives)
    fig = go.Figure()
    for mi, (method, series) in enumerate(hist.items()):
        fig.add_trace(go.Scatter(x=[s[0] for s in series], y=[s[1] for s in series],
                                 mode="lines+markers", name=method,
                                 line={"color": PALETTE[mi % len(PALETTE)]}))
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
                      yaxis2={"overlaying": "y", "side": "right", "title": "bits"},
                      margin={"l": 50, "r": 50, "t": 20, "b": 40})
    return fig


def breakdown_figure(breakdown: dict[str, int]) -> go.Figure:
    """Bytes per part of the .lnx file, as a horizontal bar."""
    total = sum(breakdown.values()) or 1
    fig = go.Figure()
    for i, (k, v) in enumerate(breakdown.items()):
        fig.add_trace(go.Bar(x=[v], y=["file"], orientation="h", name=f"{k} ({v:,} B)",
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertext=f"{k}: {v:,} bytes ({v / total:.1%})", hoverinfo="text"))
    fig.update_layout(barmode="stack", template="plotly_white", height=160,
                      margin={"l": 40, "r": 20, "t": 10, "b": 20}, xaxis_title="bytes",
                      legend={"orientation": "h", "y": -0.6})
    return fig


