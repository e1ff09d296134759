"""The Dash Pareto explorer: the front of a sweep, live, with per-run details and export to the
MLflow model registry. ``create_app(tracking_uri, experiment)`` builds it; ``serve`` runs it."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections import OrderedDict

import plotly
from dash import Dash, Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate
from flask import abort, send_file

from explorer import tracking

from . import figures
from .data import (
    DashboardDataError,
    axis_metrics,
    list_experiments,
    load_experiment,
    objectives_of,
)
from .details import details_children
from .importance import ImportanceCache, importance_figure

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PLOTLY_JS = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
PLOTLY_ROUTE = f"/_lilnetx/plotly-{plotly.__version__}.min.js"
PLOTLY_LOADER = f"""<link rel="preload" href="{PLOTLY_ROUTE}" as="script">
<script>
(function () {{
  var resolve, reject, started = false;
  window.Plotly = window.Plotly || new Promise(function (ok, fail) {{
    resolve = ok; reject = fail;
  }});
  window.lilnetxLoadPlotly = function () {{
    if (started || !resolve) {{ return; }}
    started = true;
    var s = document.createElement("script");
    s.src = "{PLOTLY_ROUTE}"; s.async = true;
    s.onload = function () {{ resolve(window.Plotly); }};
    s.onerror = reject;
    document.head.appendChild(s);
  }};
  window.addEventListener("load", function () {{
    setTimeout(window.lilnetxLoadPlotly, 3000);
  }});
}})();
</script>"""
PLOTLY_HOOKS = {"request_pre": "function () { window.lilnetxLoadPlotly(); }"}
"""plotly.js runs once the page's first callback request is out: its ~1 s of compiling overlaps
the server's answer instead of delaying the request."""
REFRESH_MS = 5000


class ArtifactCache:
    """Downloads run artifacts once into a private temporary directory."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = tempfile.mkdtemp(prefix="lilnetx-dash-")

    def get(self, run_id: str, path: str) -> str:
        if not RUN_ID.match(run_id):
            raise DashboardDataError(f"invalid run id {run_id!r}")
        dest = os.path.join(self.root, run_id)
        local = os.path.join(dest, path)
        if not os.path.exists(local):
            os.makedirs(dest, exist_ok=True)
            try:
                local = tracking.client(self.uri).download_artifacts(run_id, path, dest)
            except Exception:
                raise DashboardDataError(f"run {run_id[:8]} has no {path} artifact") from None
        return local


class FigureCache:
    """Figures by what they are drawn from, shared by every page: a page opened while another
    shows the same view gets its figures without building them. One build at a time (the
    incremental fronts and hypervolume histories kept between refreshes are not thread-safe);
    the ``size`` newest figures are kept."""

    def __init__(self, size: int = 12):
        self.size = size
        self.memo: dict = {}  # incremental fronts and hypervolume histories
        self._figs: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.built = 0

    def get(self, name: str, key: list, build):
        """The figure ``name`` drawn from ``key`` (a JSON-able list); ``build(memo)`` makes it
        when no page asked for it yet."""
        k = json.dumps([name, key], default=str)
        with self._lock:
            fig = self._figs.get(k)
            if fig is None:
                fig = build(self.memo)
                self.built += 1
                self._figs[k] = fig
                while len(self._figs) > self.size:
                    self._figs.popitem(last=False)
            self._figs.move_to_end(k)
            return fig


def _dropdown(id_, options, value, **kw):
    return dcc.Dropdown(id=id_, options=options, value=value, clearable=False,
                        style={"minWidth": "190px"}, **kw)


def _labelled(label, component):
    return html.Div([html.Label(label, style={"fontSize": "12px", "color": "#555"}), component],
                    style={"display": "inline-block", "marginRight": "14px",
                           "verticalAlign": "top"})


def layout(uri: str, experiment: str | None):
    try:
        names = list_experiments(uri)
        status = ""
    except DashboardDataError as e:
        names, status = [], str(e)
    exp = experiment if experiment else (names[-1] if names else None)
    metric_opts = [{"label": figures.label(m), "value": m} for m in axis_metrics()]
    return html.Div([
        html.H2("LilNetX tradeoff explorer", style={"margin": "6px 0"}),
        html.Div([
            _labelled("experiment", _dropdown("experiment", [{"label": n, "value": n}
                                                             for n in names], exp)),
            _labelled("sweep", _dropdown("sweep", [{"label": "all sweeps", "value": "all"}],
                                         "all")),
            _labelled("methods", dcc.Checklist(id="methods", options=[], value=[], inline=True)),
        ]),
        html.Div([
            _labelled("x axis", _dropdown("x-axis", metric_opts, "size_bytes",
                                          persistence=True)),
            _labelled("y axis", _dropdown("y-axis", metric_opts, "accuracy", persistence=True)),
            _labelled("colour by", _dropdown("color-by", [{"label": "method", "value": ""}], "",
                                             persistence=True)),
            _labelled("third objective", _dropdown(
                "third", [{"label": "none", "value": ""}] + metric_opts, "", persistence=True)),
        ], style={"margin": "6px 0"}),
        html.Div(id="status", children=status, style={"color": "#b00", "margin": "4px 0"}),
        html.Div(id="summary", style={"color": "#333", "margin": "4px 0"}),
        html.Div([
            html.Div([dcc.Graph(id="pareto", config={"displaylogo": False})],
                     style={"width": "58%", "display": "inline-block", "verticalAlign": "top"}),
            html.Div(id="details", children=html.P("Click a point to see its run."),
                     style={"width": "40%", "display": "inline-block", "verticalAlign": "top",
                            "paddingLeft": "1%", "maxHeight": "1100px", "overflowY": "auto"}),
        ]),
        html.H4("Hyperparameters to objectives"),
        dcc.Graph(id="parcoords", config={"displaylogo": False}),
        html.H4("Hypervolume by finished trial"),
        dcc.Graph(id="hv", config={"displaylogo": False}),
        html.H4("Which hyperparameter moves which objective"),
        html.Div([_labelled("method", _dropdown("importance-method", [], None)),
                  html.Span("fANOVA importances (optuna.importance) of the searched "
                            "hyperparameters, per objective of the sweep",
                            style={"fontSize": "12px", "color": "#555"})]),
        dcc.Graph(id="importance", config={"displaylogo": False}),
        dcc.Store(id="importance-shown"),
        dcc.Store(id="selected-run", storage_type="session"),
        dcc.Store(id="rendered"),  # what each figure is drawn from (skip unchanged ones)
        dcc.Store(id="drawn"),  # what the parallel coordinates and hypervolume were drawn from
        dcc.Interval(id="refresh", interval=REFRESH_MS),
    ], style={"fontFamily": "sans-serif", "margin": "0 16px"})


def selected_runs(exp, sweep: str | None, methods: list[str] | None) -> list:
    """The runs of ``exp`` in ``sweep`` ("all" or None: every sweep) by one of ``methods``
    (empty or None: every method), in the experiment's order."""
    runs = exp.runs if sweep in (None, "all") else [r for r in exp.runs if r.sweep == sweep]
    return [r for r in runs if r.method in methods] if methods else runs


def varying_params(exp) -> list[str]:
    """The numeric hyperparameters that take more than one value over the experiment's runs."""
    values: dict[str, set] = {}
    for r in exp.runs:
        for k, v in r.params.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values.setdefault(k, set()).add(v)
    return sorted(k for k, vs in values.items() if len(vs) > 1)


def view_keys(exp_name: str, exp, sweep, methods, x, y, color=None, third=None,
              selected=None) -> dict:
    """What each figure of a view is drawn from (JSON-able): a figure whose key a page has
    is not built again, and pages with the same key share one figure (:class:`FigureCache`)."""
    base = [exp_name, exp.version, sweep, sorted(methods or [])]
    return {"pareto": base + [x, y, color, third, selected], "parcoords": base + [x, y],
            "hv": base + [x, y], "page": base}


def preload(uri: str, experiment: str | None) -> threading.Thread:
    """Read the runs of ``experiment`` (default: the newest) in a thread, so the first page
    load finds them in memory (a full read of 10,000 runs from sqlite takes seconds)."""

    def work():
        try:
            names = [experiment] if experiment else list_experiments(uri)[-1:]
            for name in names:
                load_experiment(uri, name)
        except DashboardDataError:
            pass  # the page says what is wrong when it asks

    t = threading.Thread(target=work, daemon=True, name="lilnetx-preload")
    t.start()
    return t


def create_app(tracking_uri: str | None = None, experiment: str | None = None, *,
               preload_runs: bool = False) -> Dash:
    """The Dash app on ``tracking_uri`` (default: the project's default store);
    ``preload_runs``: start reading the runs now (:func:`preload`)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if preload_runs:
        preload(uri, experiment)
    app = Dash(__name__, title="LilNetX explorer", suppress_callback_exceptions=True,
               hooks=PLOTLY_HOOKS)
    # plotly.js (4.8 MB) is fetched from the start of the page (preloaded) and run when the
    # first callback request is out, not when the first graph mounts. Until it has run,
    # window.Plotly is a promise of it: dcc.Graph waits on a thenable window.Plotly instead of
    # loading its own copy (plotly.js replaces it with itself when it runs)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}\n" + PLOTLY_LOADER)

    @app.server.route(PLOTLY_ROUTE)
    def plotly_js():
        return send_file(PLOTLY_JS, mimetype="text/javascript", max_age=86400)

    cache = ArtifactCache(uri)
    app.layout = lambda: layout(uri, experiment)

    @app.server.route("/download/<run_id>/model.lnx")
    def download(run_id: str):
        if not RUN_ID.match(run_id):
            abort(404)
        try:
            path = cache.get(run_id, "model.lnx")
        except DashboardDataError:
            abort(404)
        return send_file(path, as_attachment=True, download_name=f"{run_id[:8]}.lnx")

    figs = FigureCache()
    app.figure_cache = figs  # for tests and benchmarks

    @app.callback(
        Output("pareto", "figure"), Output("status", "children"), Output("summary", "children"),
        Output("sweep", "options"), Output("methods", "options"), Output("methods", "value"),
        Output("color-by", "options"), Output("rendered", "data"),
        Input("refresh", "n_intervals"), Input("experiment", "value"), Input("sweep", "value"),
        Input("methods", "value"), Input("x-axis", "value"), Input("y-axis", "value"),
        Input("color-by", "value"), Input("third", "value"), Input("selected-run", "data"),
        State("methods", "options"), State("rendered", "data"))
    def refresh(_n, exp_name, sweep, methods, x, y, color, third, selected, method_opts,
                rendered=None):
        """The Pareto view, the page's controls and ``rendered``: what each figure is to be
        drawn from. The other figures follow in :func:`overview`, which ``rendered`` triggers,
        so the Pareto view reaches the screen first."""
        empty = figures.empty_figure
        if not exp_name:
            msg = "no experiment yet: run `lilnetx sweep SPACE.yaml` first"
            return empty(msg), msg, "", no_update, [], [], no_update, {"message": msg}
        try:
            exp = load_experiment(uri, exp_name, background=True)
        except DashboardDataError as e:
            return (empty(str(e)), str(e), "", no_update, no_update, no_update, no_update,
                    {"message": str(e)})
        rendered = rendered or {}
        keys = view_keys(exp_name, exp, sweep, methods, x, y, color, third, selected)
        if all(rendered.get(k) == v for k, v in keys.items()):
            raise PreventUpdate  # nothing changed since this page drew: no figure rebuilt
        all_methods = sorted({r.method for r in exp.runs})
        new_opts = [{"label": m, "value": m} for m in all_methods]
        known = {o["value"] for o in (method_opts or [])}
        if set(all_methods) != known:  # new methods are shown; the user's choice is kept
            methods = sorted(set(methods or []) | (set(all_methods) - known))
        runs = selected_runs(exp, sweep, methods)
        params = varying_params(exp)
        color_opts = [{"label": "method", "value": ""}] + [{"label": k, "value": k}
                                                            for k in params]
        sweeps = [{"label": "all sweeps", "value": "all"}] + [{"label": s, "value": s}
                                                             for s in exp.sweeps]
        done = sum(r.status == "FINISHED" for r in runs)
        failed = sum(r.status == "FAILED" for r in runs)
        running = sum(r.status == "RUNNING" for r in runs)
        summary = (f"{len(runs)} runs: {done} finished, {running} running, {failed} failed"
                   if runs else "")
        if not runs:
            msg = f"experiment {exp_name!r} has no runs yet"
            return (empty(msg), msg, "", sweeps, new_opts, methods, color_opts,
                    {"message": msg})
        keys = view_keys(exp_name, exp, sweep, methods, x, y, color, third, selected)
        pareto = no_update if rendered.get("pareto") == keys["pareto"] else figs.get(
            "pareto", keys["pareto"], lambda memo: figures.pareto_figure(
                runs, x, y, color=color or None, z=third or None, selected=selected,
                memo=memo))
        keys["view"] = {"experiment": exp_name, "sweep": sweep, "methods": methods, "x": x,
                        "y": y}
        return pareto, "", summary, sweeps, new_opts, methods, color_opts, keys

    @app.callback(
        Output("parcoords", "figure"), Output("hv", "figure"), Output("drawn", "data"),
        Input("rendered", "data"), State("drawn", "data"))
    def overview(rendered, drawn=None):
        """Parallel coordinates and the hypervolume history of the view that :func:`refresh`
        put in ``rendered``; ``drawn``: what they were last drawn from."""
        if not rendered:
            raise PreventUpdate
        if "message" in rendered:
            msg = rendered["message"]
            if drawn == {"message": msg}:
                raise PreventUpdate
            return figures.empty_figure(msg), figures.empty_figure(msg), {"message": msg}
        v = rendered["view"]
        try:
            exp = load_experiment(uri, v["experiment"], update=False)
        except DashboardDataError as e:
            return figures.empty_figure(str(e)), figures.empty_figure(str(e)), None
        keys = view_keys(v["experiment"], exp, v["sweep"], v["methods"], v["x"], v["y"])
        keys = {k: keys[k] for k in ("parcoords", "hv")}
        drawn = drawn or {}
        if all(drawn.get(k) == keys[k] for k in keys):
            raise PreventUpdate
        runs = selected_runs(exp, v["sweep"], v["methods"])
        objectives = objectives_of(exp, None if v["sweep"] in (None, "all") else v["sweep"])
        metrics = list(objectives) or [v["y"], v["x"]]
        params = varying_params(exp)
        parcoords = no_update if drawn.get("parcoords") == keys["parcoords"] else figs.get(
            "parcoords", keys["parcoords"],
            lambda memo: figures.parallel_figure(runs, params, metrics))
        hv = no_update if drawn.get("hv") == keys["hv"] else figs.get(
            "hv", keys["hv"], lambda memo: figures.hypervolume_figure(
                runs, objectives or {v["x"]: "min", v["y"]: "max"}, memo=memo))
        return parcoords, hv, keys

    importance_cache = ImportanceCache()

    @app.callback(
        Output("importance", "figure"), Output("importance-method", "options"),
        Output("importance-method", "value"), Output("importance-shown", "data"),
        Input("rendered", "data"), Input("refresh", "n_intervals"),
        Input("importance-method", "value"), State("experiment", "value"),
        State("sweep", "value"), State("importance-shown", "data"))
    def importance(rendered, _n, method, exp_name, sweep, shown):
        if not exp_name or not rendered:
            raise PreventUpdate
        try:
            exp = load_experiment(uri, exp_name, update=False)  # the refresh callback updates
        except DashboardDataError:
            raise PreventUpdate from None
        runs = exp.runs if sweep in (None, "all") else [r for r in exp.runs if r.sweep == sweep]
        counts: dict[str, int] = {}
        for r in runs:
            if r.status == "FINISHED":
                counts[r.method] = counts.get(r.method, 0) + 1
        if not counts:
            raise PreventUpdate
        if method not in counts:
            method = max(counts, key=counts.get)
        objectives = objectives_of(exp, None if sweep in (None, "all") else sweep) or {
            "val_accuracy": "max", "size_bytes": "min"}
        result = importance_cache.get(runs, objectives, method)
        key = [exp_name, sweep, method, id(result) if result is not None else None]
        options = [{"label": f"{m} ({n} finished)", "value": m} for m, n in sorted(counts.items())]
        if key == shown:
            return no_update, options, method, no_update
        return importance_figure(result, method), options, method, key

    @app.callback(Output("selected-run", "data"), Input("pareto", "clickData"),
                  prevent_initial_call=True)
    def select(click):
        try:
            return click["points"][0]["customdata"][0]
        except (TypeError, KeyError, IndexError):
            return no_update

    @app.callback(Output("details", "children"), Input("selected-run", "data"))
    def details(run_id):
        if not run_id:
            return html.P("Click a point to see its run.")
        try:
            return details_children(uri, cache, run_id)
        except Exception as e:
            return html.P(f"cannot show run {run_id}: {e}", style={"color": "#b00"})

    @app.callback(Output("export-result", "children"), Input("export-button", "n_clicks"),
                  State("export-name", "value"), State("export-alias", "value"),
                  State("selected-run", "data"), prevent_initial_call=True)
    def export(n, name, alias, run_id):
        if not n or not run_id:
            return no_update
        from explorer.registry import export_run
        from lilnetx.errors import LilNetXError

        try:
            res = export_run(run_id, (name or "").strip(), (alias or "champion").strip(), uri)
        except LilNetXError as e:
            return html.Span(f"error: {e}", style={"color": "#b00"}, id="export-error")
        return html.Div([
            html.Span(f"registered {res['name']} version {res['version']} as "),
            html.Code(res["uri"], id="export-uri"), html.Span(" | "),
            html.A("download .lnx", href=f"/download/{run_id}/model.lnx")])

    return app


def serve(tracking_uri: str | None = None, experiment: str | None = None,
          host: str = "127.0.0.1", port: int = 8050) -> None:
    """Run the app with Dash's server (bound to loopback unless told otherwise)."""
    app = create_app(tracking_uri, experiment, preload_runs=True)
    app.run(host=host, port=port, debug=False)
