"""The details panel of one run: the numbers that matter first (accuracy, size and ratio,
latency, MACs, sparsity), then the curves, the layers by what they are, the file's size
breakdown, the full table of metrics and parameters, and the export form."""

from __future__ import annotations

import json

from dash import dash_table, dcc, html

from explorer import tracking

from . import figures
from .data import DashboardDataError

CARD = {"display": "inline-block", "border": "1px solid #ddd", "borderRadius": "6px",
        "padding": "6px 10px", "margin": "0 8px 8px 0", "minWidth": "110px",
        "verticalAlign": "top"}


def _card(title: str, value: str, sub: str = "", id_: str | None = None):
    parts = [html.Div(title, style={"fontSize": "11px", "color": "#666"}),
             html.Div(value, style={"fontSize": "18px", "fontWeight": "600"})]
    if sub:
        parts.append(html.Div(sub, style={"fontSize": "11px", "color": "#444"}))
    return html.Div(parts, style=CARD, **({"id": id_} if id_ else {}))


def headline(m: dict) -> list:
    """Cards with the numbers a user chooses by, in their units ("-" when not recorded)."""
    from lilnetx.metrics import format_metric, format_value

    def ratio(dense, value):
        a, b = m.get(dense), m.get(value)
        if isinstance(a, int | float) and isinstance(b, int | float) and a > 0 and b > 0:
            return format_value("ratio", a / b)
        return ""

    size_ratio = ratio("dense_bytes", "size_bytes")
    mac_ratio = ratio("dense_flops", "flops")
    return [
        _card("test accuracy", format_metric("accuracy", m.get("accuracy")),
              f"validation {format_metric('val_accuracy', m.get('val_accuracy'))}",
              "card-accuracy"),
        _card("file size", format_metric("size_bytes", m.get("size_bytes")),
              f"{size_ratio} smaller than fp32" if size_ratio else "", "card-size"),
        _card("latency", format_metric("latency_ms", m.get("latency_ms")),
              f"batch 64: {format_metric('latency_ms_b64', m.get('latency_ms_b64'))}",
              "card-latency"),
        _card("MACs per sample", format_metric("flops", m.get("flops")),
              f"{mac_ratio} fewer than dense" if mac_ratio else "", "card-macs"),
        _card("slice sparsity", format_metric("slice_sparsity", m.get("slice_sparsity")),
              f"channels removed {format_metric('channel_sparsity', m.get('channel_sparsity'))}",
              "card-sparsity"),
    ]


def _full_table(m: dict, p: dict):
    from lilnetx.metrics import METRICS, format_metric, format_param

    rows = [{"key": METRICS.get(k).label if k in METRICS else k, "name": k,
             "value": format_metric(k, v), "exact": f"{v:.6g}"} for k, v in sorted(m.items())]
    rows += [{"key": f"param {k}", "name": k, "value": format_param(_num(v)), "exact": str(v)}
             for k, v in sorted(p.items())]
    return dash_table.DataTable(
        id="details-metrics", data=rows,
        columns=[{"name": "", "id": "key"}, {"name": "value", "id": "value"},
                 {"name": "exact", "id": "exact"}],
        style_cell={"fontSize": "12px", "padding": "2px 6px", "textAlign": "left"},
        page_size=40)


def _num(v: str):
    from explorer.runs import _number

    return _number(v)


def _layers(rows: list[dict]):
    from lilnetx.metrics import format_value
    from lilnetx.stats import layer_kind

    data = [{"layer": r["name"],
             "kind": layer_kind(r["shape"], r.get("in_channels")),
             "shape": "x".join(map(str, r["shape"])),
             "size": format_value("bytes", r["bits"] / 8),
             "slice sparsity": f"{100 * r['slice_sparsity']:.1f}%",
             "channels kept": f"{r['out_channels'] - r['out_channels_zero']}/"
                              f"{r['out_channels']}"} for r in rows]
    return dash_table.DataTable(
        id="details-layers", data=data, columns=[{"name": k, "id": k} for k in data[0]],
        style_cell={"fontSize": "12px", "padding": "2px 6px"}, page_size=30)


def details_children(uri: str, cache, run_id: str) -> list:
    """The panel's components for run ``run_id`` (``cache``: the app's artifact cache)."""
    c = tracking.client(uri)
    run = c.get_run(run_id)
    m, p = run.data.metrics, run.data.params
    parts = [html.H3(run.info.run_name or run_id[:8], id="details-title"),
             html.P(f"run {run_id} | {run.info.status} | method "
                    f"{run.data.tags.get(tracking.TAG_METHOD, '?')}"),
             html.Div(headline(m), id="details-headline")]
    if run.data.tags.get(tracking.TAG_ERROR):
        parts.append(html.Pre(run.data.tags[tracking.TAG_ERROR], style={"color": "#b00"}))
    history = {}
    for key in ("val_accuracy", "train_accuracy", "train_loss", "bits_estimate"):
        logged = tracking.EPOCH_KEYS.get(key, key)
        pts = [(h.step, h.value) for h in c.get_metric_history(run_id, logged) if h.step > 0]
        if not pts and logged != key:  # a run recorded before the epoch keys were renamed
            pts = [(h.step, h.value) for h in c.get_metric_history(run_id, key) if h.step > 0]
        if pts:
            history[key] = pts
    parts += [html.H4("Training curves"), dcc.Graph(figure=figures.curves_figure(history))]
    try:
        from lilnetx.fileformat.report import inspect
        from lilnetx.metrics import format_size

        rep = inspect(cache.get(run_id, "model.lnx"))
        parts += [html.H4(f"File: {format_size(rep['size_bytes'], m.get('dense_bytes'))} "
                          f"({rep['size_bytes']:,} bytes)", id="details-file"),
                  dcc.Graph(figure=figures.breakdown_figure(rep["breakdown"])),
                  html.A("download model.lnx", href=f"/download/{run_id}/model.lnx",
                         id="download-link")]
        export = [html.H4("Export to the model registry"), html.Div([
            dcc.Input(id="export-name", placeholder="registered model name", type="text",
                      debounce=False, style={"marginRight": "6px"}),
            dcc.Input(id="export-alias", value="champion", type="text",
                      style={"marginRight": "6px", "width": "110px"}),
            html.Button("Export", id="export-button", n_clicks=0)]),
            html.Div(id="export-result", style={"marginTop": "6px"})]
    except Exception as e:  # a run without a model file, or a file that does not decode
        parts.append(html.P(f"no model file to show or export: {e}", id="no-model"))
        export = [dcc.Input(id="export-name", style={"display": "none"}),
                  dcc.Input(id="export-alias", value="champion", style={"display": "none"}),
                  html.Button(id="export-button", n_clicks=0, style={"display": "none"}),
                  html.Div(id="export-result")]
    try:
        with open(cache.get(run_id, "layers.json")) as f:
            layers = json.load(f)
        parts += [html.H4("Layers"), _layers(layers)]
    except (DashboardDataError, OSError, KeyError, IndexError, ValueError, TypeError) as e:
        parts.append(html.P(f"no per-layer table: {e}"))
    parts += export
    parts += [html.H4("All metrics and parameters"), _full_table(m, p)]
    return parts
