"""The live dashboard on a 10,000-run experiment: polls with nothing new, polls after new runs, and
the first page load in Chromium, on a sqlite store and on an MLflow server (issue 16).

10,000 synthetic trial runs (the contents of :func:`dashboard_figures.synthetic_run`: two methods,
``lilnetx`` and ``quant``, ~3% FAILED with an error tag, the tags a real sweep writes:
``lilnetx.role=trial``, ``lilnetx.sweep``, ``lilnetx.method``, ``lilnetx.trial``,
``mlflow.parentRunId``) are written into a real MLflow sqlite store with
:func:`_mlflow_bulk.bulk_log_runs`, after the experiment and the sweep parent run
(``lilnetx.role=sweep``, ``lilnetx.objectives``; left RUNNING, as during a live sweep) were created
through ``MlflowClient``. The last trial ended a minute before the timings start. The database is
copied once, so each store starts from the same 10,000 runs:

- ``sqlite``: the ``sqlite:///`` URI, read in this process;
- ``server``: ``mlflow server --workers 1`` on 127.0.0.1 over the copy (its own process group,
  stopped by PID).

Per store, with the dashboard's own code in this process (``dashboards.data.load_experiment`` and
the page's ``refresh`` callback from ``dashboards.app.create_app``, called with the page's default
inputs and, as ``rendered``, the JSON round trip of what the previous call returned):

1. the first full read of the runs (``load_experiment`` on a cold cache; not a target: the
   dashboard server does it in a thread when it starts, ``create_app(preload_runs=True)``);
2. a new page's first ``refresh`` call (no ``rendered`` state: every figure is built);
3. a refresh with nothing new (the store quiet for more than a minute): the callback ends in
   ``PreventUpdate``. Target <= 0.2 s;
4. then, alternating: 50 new trial runs logged through the real client API (``create_run`` with
   the trial tags, ``log_batch``, ``set_terminated``, against that store or server), one refresh
   that must rebuild the figures (target <= 1 s; timed to the callback's return, the JSON encoding
   Dash then does is timed apart), and one refresh with nothing new right after (the 50 runs are
   inside the 30 s overlap of the "ended since" query, which leaves them out by id). A refresh
   is the page's ``refresh`` callback (the Pareto view) followed by the ``overview`` callback its
   ``rendered`` store triggers (parallel coordinates, hypervolume), as in the browser.

Then the first page load in Chromium (Playwright, headless ``/usr/bin/chromium``, software WebGL):
``lilnetx dashboard`` started as a subprocess on 127.0.0.1 on that store; a page is opened as soon
as it answers HTTP (server start to first drawn Pareto figure: the cold start, which includes the
preload); that page's render starts the dashboard's fANOVA importance thread, and one page is
timed while it runs; once it is done, each repeat opens the page in a new browser context (empty
cache and storage) and
measures navigation start to the first drawn Pareto figure: ``#pareto``'s plot has data
(``_fullData``) and ``dcc.Graph``'s ``Plotly.react`` has finished (its ``dash-graph--pending``
class removed), seen from a ``requestAnimationFrame`` loop, i.e. at the next frame. Target <= 2 s.

Times are the first call and the median of ``--repeats`` more. Each in-process refresh also
records the runs ``RunCache`` read, its seconds, and the time spent in Python's cyclic garbage
collector (``gc.callbacks``); each page load, the resource timings, every graph's
``Plotly.react`` time and the long tasks. A missed target is profiled (cProfile) and its cause
stated. ``--keep DIR`` also keeps every measurement in ``DIR/results.json``.

    python benchmarks/dashboard_scale.py                       # writes the `dashboard_scale` section
    python benchmarks/dashboard_scale.py --no-write --runs 2000 --repeats 3
    python benchmarks/dashboard_scale.py --stores sqlite       # no MLflow server
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import command_line, loadavg, machine_line, publish  # noqa: E402
from dashboard_figures import OBJECTIVES, synthetic_run  # noqa: E402

SECTION = "dashboard_scale"
EXPERIMENT = "bench-dashboard-scale"
SWEEP = "bench-20260102-000000-scale0"
ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BATCH = 50
TARGETS = {"quiet": 0.2, "after": 0.2, "new": 1.0, "browser": 2.0}
"""Seconds: refresh with nothing new (quiet store / right after a batch), refresh after 50 new
runs, first page load to the first drawn figure."""
PAGE_ARGS = {"sweep": "all", "methods": ["lilnetx", "quant"], "x": "size_bytes",
             "y": "accuracy", "color": "", "third": "", "selected": None}
"""The page's default inputs (what a new page sends): all sweeps, both methods, accuracy vs size,
coloured by method, no third objective, nothing selected."""


# --------------------------------------------------------------------------------- the store
def trial(i: int, rng: random.Random, start: int, end: int, parent: str) -> dict:
    """Trial ``i`` as :func:`_mlflow_bulk.bulk_log_runs` takes it (the rows ``populate`` of
    dashboard_figures.py logs through the client: curves per epoch, final metrics at step 0)."""
    from explorer import tracking

    method, params, metrics, curves, fail = synthetic_run(i, rng)
    ms: dict[str, list] = {}
    for k, vs in curves.items():
        for e, v in enumerate(vs, 1):
            ms.setdefault(k, []).append((float(v), start + 1000 * e, e))
    tags = {tracking.TAG_PARENT: parent, tracking.TAG_SWEEP: SWEEP,
            tracking.TAG_METHOD: method, tracking.TAG_ROLE: "trial",
            tracking.TAG_TRIAL: str(i), "lilnetx.core.model": "lenet5",
            "lilnetx.dataset": "fashion_mnist"}
    if fail:
        first = next(iter(ms))
        ms = {first: ms[first][:1]}
        tags[tracking.TAG_ERROR] = "TrainingDiverged: loss is nan at epoch 1"
    else:
        for k, v in metrics.items():
            ms.setdefault(k, []).append((float(v), end, 0))
    return {"run_name": f"{SWEEP}-t{i:05d}", "start_time": start, "end_time": end,
            "status": "FAILED" if fail else "FINISHED", "tags": tags,
            "params": {k: str(v) for k, v in params.items()}, "metrics": ms}


def populate(uri: str, n: int, seed: int = 0) -> dict:
    """The experiment and the sweep parent (client), then ``n`` trials (bulk). Trial i starts
    30 s after trial i-1 and runs 60 s; the last one ended a minute ago."""
    from _mlflow_bulk import bulk_log_runs
    from mlflow.entities import Param

    from explorer import tracking

    t0 = time.perf_counter()
    exp_id = tracking.ensure_experiment(uri, EXPERIMENT)
    c = tracking.client(uri)
    now = int(time.time() * 1000)
    start = now - 120_000 - n * 30_000
    parent = c.create_run(exp_id, run_name=SWEEP, start_time=start, tags={
        tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: SWEEP, "lilnetx.space": "bench",
        tracking.TAG_METHOD: "lilnetx", tracking.TAG_OBJECTIVES: json.dumps(OBJECTIVES)})
    c.log_batch(parent.info.run_id, params=[Param("model", "lenet5"), Param("sampler", "tpe")])
    t_client = time.perf_counter() - t0
    rng = random.Random(seed)
    runs = [trial(i, rng, start + 1000 + i * 30_000, start + 61_000 + i * 30_000,
                  parent.info.run_id) for i in range(n)]
    t1 = time.perf_counter()
    bulk_log_runs(uri, exp_id, runs)
    t_bulk = time.perf_counter() - t1
    return {"runs": n, "failed": sum(r["status"] == "FAILED" for r in runs),
            "experiment_id": exp_id, "parent": parent.info.run_id, "client_seconds": t_client,
            "bulk_seconds": t_bulk, "seconds": time.perf_counter() - t0}


def log_batch_of_runs(uri: str, exp_id: str, parent: str, first: int, k: int,
                      rng: random.Random) -> float:
    """``k`` new trials through the real client API, as a sweep's workers log them: create_run
    with the trial tags, one log_batch, set_terminated (end time now). Returns seconds."""
    from explorer import tracking

    t0 = time.perf_counter()
    c = tracking.client(uri)
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints a link per ended run
        _log_runs(c, exp_id, parent, first, k, rng)
    return time.perf_counter() - t0


def _log_runs(c, exp_id: str, parent: str, first: int, k: int, rng: random.Random) -> None:
    from mlflow.entities import Metric, Param, RunTag

    from explorer import tracking

    for i in range(first, first + k):
        now = int(time.time() * 1000)
        spec = trial(i, rng, now - 60_000, now, parent)
        tags = {k2: v for k2, v in spec["tags"].items() if k2 != tracking.TAG_ERROR}
        run = c.create_run(exp_id, run_name=spec["run_name"], start_time=spec["start_time"],
                           tags=tags)
        extra = ([RunTag(tracking.TAG_ERROR, spec["tags"][tracking.TAG_ERROR])]
                 if tracking.TAG_ERROR in spec["tags"] else [])
        c.log_batch(run.info.run_id,
                    metrics=[Metric(key, v, ts, step) for key, vs in spec["metrics"].items()
                             for v, ts, step in vs],
                    params=[Param(key, v) for key, v in spec["params"].items()], tags=extra)
        c.set_terminated(run.info.run_id, spec["status"])


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM to the process group of ``proc`` (started with start_new_session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> float:
    """Seconds until ``url`` answers 200 (raises if ``proc`` exits or ``timeout`` passes)."""
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{what} did not answer at {url} in {timeout:g} s:\n{tail(log)}")
        time.sleep(0.2)


@contextlib.contextmanager
def server_process(cmd: list[str], cwd: Path, log: Path):
    """``cmd`` in its own process group, output to ``log``; yields (proc, start time); stopped
    by PID on the way out."""
    proc = None
    try:
        with open(log, "wb") as f:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        yield proc, t0
    finally:
        stop(proc)


@contextlib.contextmanager
def mlflow_server(db_uri: str, tmp: Path):
    """``mlflow server`` (1 worker, no artifact proxy) on a free loopback port; yields
    (uri, seconds until /health answered)."""
    port, log = free_port(), tmp / "mlflow-server.log"
    art = tmp / "server-artifacts"
    art.mkdir(exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", db_uri,
           "--default-artifact-root", art.as_uri(), "--no-serve-artifacts",
           "--host", HOST, "--port", str(port), "--workers", "1"]
    with server_process(cmd, tmp, log) as (proc, t0):
        uri = f"http://{HOST}:{port}"
        wait_http(f"{uri}/health", proc, log, 180, "mlflow server")
        yield uri, time.perf_counter() - t0


@contextlib.contextmanager
def dashboard_server(uri: str, tmp: Path, tag: str):
    """``lilnetx dashboard`` on a free loopback port; yields (url, proc, start time, log)."""
    port, log = free_port(), tmp / f"dashboard-{tag}.log"
    cwd = tmp / f"dashboard-{tag}"
    cwd.mkdir(exist_ok=True)
    cmd = [str(BIN / "lilnetx"), "dashboard", "--tracking-uri", uri, "--experiment",
           EXPERIMENT, "--host", HOST, "--port", str(port)]
    with server_process(cmd, cwd, log) as (proc, t0):
        yield f"http://{HOST}:{port}/", proc, t0, log


# --------------------------------------------------------------------- in-process timings
def page_refresh(app):
    """The page's ``refresh`` and ``overview`` callbacks, undecorated (as dashboard_figures.py
    gets them): ``refresh`` draws the Pareto view and sets ``rendered``, which triggers
    ``overview`` (parallel coordinates, hypervolume)."""
    fns = {v["callback"].__wrapped__.__name__: v["callback"].__wrapped__
           for v in app.callback_map.values()}
    return fns["refresh"], fns["overview"]


class GcClock:
    """Seconds spent in Python's cyclic garbage collector (and full, generation-2 collections)
    while the ``with`` block runs (``gc.callbacks``)."""

    def __init__(self):
        self.seconds, self.full, self._t = 0.0, 0, None

    def _cb(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self.full += info.get("generation") == 2
            self._t = None

    def __enter__(self):
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._cb)


class Page:
    """One browser page's view of the callback: it sends what it rendered last."""

    def __init__(self, callbacks, key: tuple[str, str]):
        (self.refresh, self.overview), self.key, self.n = callbacks, key, 0
        self.rendered = self.drawn = None

    def poll(self) -> dict:
        """One poll: ``refresh``, then, when it answered, ``overview`` with what it put in
        ``rendered`` (as the browser does); {seconds (both), prevented, json_bytes,
        json_seconds, queries, ...}."""
        from dash import no_update
        from dash.exceptions import PreventUpdate
        from plotly.io.json import to_json_plotly

        from dashboards.data import experiment_cache

        self.n += 1
        a = PAGE_ARGS
        opts = [{"label": m, "value": m} for m in a["methods"]]
        with GcClock() as clock:
            t0 = time.perf_counter()
            try:
                out = self.refresh(self.n, EXPERIMENT, a["sweep"], a["methods"], a["x"],
                                   a["y"], a["color"], a["third"], a["selected"], opts,
                                   self.rendered)
            except PreventUpdate:
                seconds, out = time.perf_counter() - t0, None
            else:
                rendered = json.loads(json.dumps(out[-1]))
                try:
                    over = self.overview(rendered, self.drawn)
                except PreventUpdate:
                    over = (no_update, no_update, None)
                seconds = time.perf_counter() - t0
        res = {"seconds": seconds, "prevented": out is None, "json_bytes": 0,
               "json_seconds": 0.0, "figures": 0, "gc_seconds": clock.seconds,
               "gc_full": clock.full}
        if out is not None:
            t1 = time.perf_counter()
            # what Dash sends: every output that is not no_update, encoded by plotly's encoder
            encoded = [to_json_plotly(o) for o in (*out, *over) if o is not no_update]
            res["json_seconds"] = time.perf_counter() - t1
            res["json_bytes"] = sum(len(e) for e in encoded)
            res["figures"] = sum(o is not no_update for o in (out[0], over[0], over[1]))
            if out[1]:
                raise RuntimeError(f"the page shows an error: {out[1]}")
            # the browser sends back the JSON of what it stored
            self.rendered = rendered
            if over[2] is not None:
                self.drawn = json.loads(json.dumps(over[2]))
        last = experiment_cache(*self.key).last
        res["queries"] = last.queries if last else 0
        res["changed"] = last.changed if last else 0
        res["read"] = last.read if last else 0
        res["cache_seconds"] = last.seconds if last else 0.0
        return res


def profile_text(fn, top: int = 14) -> tuple[str, object]:
    pr = cProfile.Profile()
    pr.enable()
    try:
        out = fn()
    finally:
        pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue(), out


def summary(first: dict, rest: list[dict], key: str = "seconds") -> dict:
    rows = rest or [first]
    vals = [r[key] for r in rows]
    out = {"first": first[key], "median": statistics.median(vals), "max": max(vals),
           "n": len(vals)}
    for k in ("gc_seconds", "cache_seconds", "read"):
        if k in first:
            out[f"{k}_median"] = statistics.median(r[k] for r in rows)
            out[f"{k}_first"] = first[k]
    if "gc_full" in first:
        out["gc_full"] = sum(r["gc_full"] for r in rows)
    return out


def in_process(uri: str, pop: dict, repeats: int, rng: random.Random, next_trial: list[int],
               profile_misses: bool) -> dict:
    """Steps 1-4 of the module docstring on one store."""
    from dashboards.app import create_app
    from dashboards.data import experiment_cache, load_experiment

    res: dict = {"load_before": loadavg()}
    t0 = time.perf_counter()
    exp = load_experiment(uri, EXPERIMENT)
    res["full_load"] = {"seconds": time.perf_counter() - t0, "runs": len(exp.runs),
                        "queries": experiment_cache(uri, EXPERIMENT).last.queries}

    app = create_app(uri, EXPERIMENT)
    refresh = page_refresh(app)

    def new_page() -> dict:
        r = Page(refresh, (uri, EXPERIMENT)).poll()
        if r["prevented"] or r["figures"] != 3:
            raise RuntimeError(f"a new page's refresh did not build the figures: {r}")
        return r

    first = new_page()
    res["new_page"] = summary(first, [new_page() for _ in range(repeats)])
    res["new_page"]["json_bytes"] = first["json_bytes"]
    res["new_page"]["json_seconds"] = first["json_seconds"]

    page = Page(refresh, (uri, EXPERIMENT))
    page.poll()

    def quiet() -> dict:
        r = page.poll()
        if not r["prevented"]:
            raise RuntimeError(f"a refresh with nothing new rebuilt figures: {r}")
        return r

    q = [quiet() for _ in range(repeats + 1)]
    res["quiet"] = summary(q[0], q[1:])
    res["quiet"]["queries"] = q[-1]["queries"]

    logs, new, after = [], [], []
    for _ in range(repeats + 1):
        logs.append(log_batch_of_runs(uri, pop["experiment_id"], pop["parent"], next_trial[0],
                                      BATCH, rng))
        next_trial[0] += BATCH
        r = page.poll()
        if r["prevented"] or r["changed"] != BATCH:
            raise RuntimeError(f"the refresh after {BATCH} new runs saw {r['changed']} changed "
                               f"runs (prevented: {r['prevented']})")
        new.append(r)
        a = page.poll()
        if not a["prevented"]:
            raise RuntimeError(f"a refresh with nothing new rebuilt figures: {a}")
        after.append(a)
    res["log_batch"] = {"median": statistics.median(logs), "first": logs[0]}
    res["new"] = summary(new[0], new[1:])
    res["new"].update(json_bytes=new[-1]["json_bytes"], queries=new[-1]["queries"],
                      json_median=statistics.median(r["json_seconds"] for r in new[1:] or new),
                      total_median=statistics.median(r["seconds"] + r["json_seconds"]
                                                     for r in new[1:] or new))
    res["after"] = summary(after[0], after[1:])
    res["after"]["queries"] = after[-1]["queries"]
    res["runs_after"] = len(experiment_cache(uri, EXPERIMENT).runs)

    res["profiles"] = {}
    if profile_misses:
        if res["quiet"]["median"] > TARGETS["quiet"]:
            res["profiles"]["quiet"], _ = profile_text(page.poll)
        if res["new"]["median"] > TARGETS["new"]:
            log_batch_of_runs(uri, pop["experiment_id"], pop["parent"], next_trial[0], BATCH,
                              rng)
            next_trial[0] += BATCH
            res["profiles"]["new"], _ = profile_text(page.poll)
            if res["after"]["median"] > TARGETS["after"]:
                res["profiles"]["after"], _ = profile_text(page.poll)
            page.poll()
    res["last_end"] = time.time()
    res["_page"] = page  # polled again later (late_polls); not in results.json
    res["load_after"] = loadavg()
    return res


def late_polls(page: Page, last_end: float, repeats: int) -> dict:
    """Refreshes with nothing new minutes after the last new run ended (the store idle since):
    what every poll of an idle dashboard costs once a sweep has had a burst of runs."""
    rows = []
    for _ in range(repeats + 1):
        r = page.poll()
        if not r["prevented"]:
            raise RuntimeError(f"a refresh with nothing new rebuilt figures: {r}")
        rows.append(r)
    out = summary(rows[0], rows[1:])
    out["queries"] = rows[-1]["queries"]
    out["idle_minutes"] = (time.time() - last_end) / 60
    return out


# ----------------------------------------------------------------------------------- browser
DRAWN_JS = """
(() => {
  const s = window.__lnx = {data: null, drawn: null, reacts: [], long: []};
  try {
    new PerformanceObserver(l => { for (const e of l.getEntries()) s.long.push([e.startTime, e.duration]); })
      .observe({entryTypes: ['longtask']});
  } catch (e) {}
  // time each graph's Plotly.react (dcc.Graph calls window.Plotly.react once per figure)
  let P;
  Object.defineProperty(window, 'Plotly', {configurable: true, get() { return P; }, set(v) {
    P = v;
    const f = v.react;
    v.react = function(gd, ...a) {
      const t0 = performance.now();
      const el = gd && gd.closest ? gd.closest('[id]') : null;
      const n = a[0] && a[0].data ? a[0].data.length : 0;
      const r = f.call(this, gd, ...a);
      s.reacts.push({id: el ? el.id : '?', traces: n, t0: t0, sync: performance.now() - t0});
      return r;
    };
  }});
  function poll() {
    const gd = document.querySelector('#pareto .js-plotly-plot');
    if (gd && gd._fullData && gd._fullData.length > 0 && gd._fullLayout) {
      if (s.data === null) s.data = performance.now();
      if (!gd.classList.contains('dash-graph--pending')) { s.drawn = performance.now(); return; }
    }
    requestAnimationFrame(poll);
  }
  requestAnimationFrame(poll);
})();
"""
IMPORTANCE_DONE_JS = """() => {
  const gd = document.querySelector('#importance .js-plotly-plot');
  if (!gd || !gd.layout) return false;
  const notes = (gd.layout.annotations || []).map(a => a.text || '').join(' ');
  return (gd.data && gd.data.length > 0) || (notes.length > 0 && !notes.includes('computing'));
}"""
TIMING_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const upd = res.filter(e => e.name.includes('_dash-update-component'))
                 .sort((a, b) => b.encodedBodySize - a.encodedBodySize)[0];
  const lay = res.filter(e => e.name.includes('_dash-layout'))[0];
  const plotly = res.filter(e => e.name.includes('plotly')).sort((a, b) =>
                 b.encodedBodySize - a.encodedBodySize)[0];
  const gd = document.querySelector('#pareto .js-plotly-plot');
  return {data: window.__lnx.data, drawn: window.__lnx.drawn,
          dom: nav ? nav.domContentLoadedEventEnd : null,
          layout_end: lay ? lay.responseEnd : null,
          plotly_end: plotly ? plotly.responseEnd : null,
          update_start: upd ? upd.requestStart || upd.startTime : null,
          update_first_byte: upd ? upd.responseStart : null,
          update_end: upd ? upd.responseEnd : null,
          update_bytes: upd ? upd.encodedBodySize : null,
          traces: gd ? gd._fullData.length : 0,
          points: gd ? gd._fullData.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : 0,
          gl: gd ? gd._fullData.some(t => t.type === 'scattergl') : false,
          reacts: window.__lnx.reacts.filter(r => r.traces > 0),
          long: window.__lnx.long};
}"""


def open_page(browser, url: str, timeout_s: float = 180, keep: bool = False):
    """One page in a new context; navigation start to the first drawn Pareto figure (ms).
    ``keep``: return (timings, context) with the page still open."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        ctx.add_init_script(DRAWN_JS)
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url, wait_until="commit", timeout=timeout_s * 1000)
        pg.wait_for_function("() => window.__lnx && window.__lnx.drawn !== null",
                             timeout=timeout_s * 1000, polling=100)
        t = pg.evaluate(TIMING_JS)
        status = pg.inner_text("#status")
        if status.strip():
            raise RuntimeError(f"the page shows an error: {status}")
        t["errors"] = errors
        t["summary"] = pg.inner_text("#summary")
    except BaseException:
        ctx.close()
        raise
    if keep:
        return t, ctx, pg
    ctx.close()
    return t


def browser_timings(uri: str, tmp: Path, tag: str, repeats: int) -> dict:
    """The cold page (opened as soon as the dashboard answers), one page while the importance
    thread it started runs, then, once that thread is done, ``repeats`` + 1 timed pages."""
    from playwright.sync_api import sync_playwright

    res: dict = {"load_before": loadavg()}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            with dashboard_server(uri, tmp, tag) as (url, proc, t0, log):
                res["http"] = wait_http(url, proc, log, 180, "lilnetx dashboard")
                try:
                    cold, ctx, pg = open_page(browser, url, keep=True)
                except Exception as e:
                    raise RuntimeError(f"{e}\n{tail(log)}") from None
                try:
                    res["cold"] = time.perf_counter() - t0
                    res["cold_page"] = cold
                    t_cold = time.perf_counter()
                    # the first page's render started the fANOVA thread: a page opened now
                    res["during_importance"] = open_page(browser, url)
                    res["importance_busy"] = not pg.evaluate(IMPORTANCE_DONE_JS)
                    try:
                        pg.wait_for_function(IMPORTANCE_DONE_JS, timeout=300_000, polling=500)
                        res["importance_seconds"] = time.perf_counter() - t_cold
                    except Exception:
                        res["importance_seconds"] = None
                finally:
                    ctx.close()
                pages = [open_page(browser, url) for _ in range(repeats + 1)]
                if proc.poll() is not None:
                    raise RuntimeError(f"the dashboard exited:\n{tail(log)}")
        finally:
            browser.close()
    res["pages"] = pages
    first = {k: v / 1000 for k, v in pages[0].items() if k in ("drawn", "data")}
    rest = [{k: v / 1000 for k, v in pg.items() if k in ("drawn", "data")} for pg in pages[1:]]
    res["drawn"] = summary(first, rest, "drawn")
    med = sorted(pages[1:] or pages, key=lambda pg: pg["drawn"])[len(pages[1:] or pages) // 2]
    res["median_page"] = med
    res["load_after"] = loadavg()
    return res


def profile_new_page(uri: str) -> str:
    """cProfile of the callback a new page triggers (every figure built, then encoded)."""
    from dash import no_update
    from plotly.io.json import to_json_plotly

    from dashboards.app import create_app

    refresh, overview = page_refresh(create_app(uri, EXPERIMENT))
    a = PAGE_ARGS
    opts = [{"label": m, "value": m} for m in a["methods"]]

    def call():
        out = refresh(1, EXPERIMENT, a["sweep"], a["methods"], a["x"], a["y"], a["color"],
                      a["third"], a["selected"], opts, None)
        over = overview(json.loads(json.dumps(out[-1])), None)
        return [to_json_plotly(o) for o in (*out, *over) if o is not no_update]

    call()  # warm, as the dashboard is after its first page
    text, _ = profile_text(call, top=18)
    return text


# --------------------------------------------------------------------------------------- run
def run(n: int, repeats: int, stores: list[str], keep: str | None) -> dict:
    tmp = Path(keep or tempfile.mkdtemp(prefix="lilnetx-bench-scale-"))
    try:
        return _run(n, repeats, stores, tmp)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(n: int, repeats: int, stores: list[str], tmp: Path) -> dict:
    t_start = time.perf_counter()
    tmp.mkdir(parents=True, exist_ok=True)
    db = (tmp / "mlflow.db").resolve()
    uri = f"sqlite:///{db}"
    res: dict = {"load_start": loadavg(), "uptime": subprocess.run(
        ["uptime"], capture_output=True, text=True).stdout.strip()}
    print(f"[scale] {res['uptime']}", file=sys.stderr)
    pop = populate(uri, n)
    res["populate"] = pop
    print(f"[scale] populated {n} runs in {pop['seconds']:.1f} s "
          f"(bulk {pop['bulk_seconds']:.1f} s)", file=sys.stderr)
    server_db = tmp / "server.db"
    shutil.copyfile(db, server_db)
    res["stores"] = {}
    for store in stores:
        rng = random.Random(1000 + len(res["stores"]))
        next_trial = [n]
        out: dict = {}
        with contextlib.ExitStack() as stack:
            if store == "sqlite":
                store_uri = uri
            elif store == "server":
                store_uri, out["server_start"] = stack.enter_context(
                    mlflow_server(f"sqlite:///{server_db.resolve()}", tmp))
            else:
                raise ValueError(f"unknown store {store!r} (sqlite, server)")
            print(f"[scale] {store}: in-process timings on {store_uri}", file=sys.stderr)
            out.update(in_process(store_uri, pop, repeats, rng, next_trial, True))
            print(f"[scale] {store}: quiet {out['quiet']['median']:.3f} s, new "
                  f"{out['new']['median']:.3f} s; browser", file=sys.stderr)
            out["browser"] = browser_timings(store_uri, tmp, store, repeats)
            print(f"[scale] {store}: browser {out['browser']['drawn']['median']:.3f} s",
                  file=sys.stderr)
            out["late"] = late_polls(out.pop("_page"), out["last_end"], repeats)
            if out["browser"]["drawn"]["median"] > TARGETS["browser"]:
                out["profiles"]["browser"] = profile_new_page(store_uri)
        res["stores"][store] = out
    res["load_end"] = loadavg()
    res["total_seconds"] = time.perf_counter() - t_start
    return res


# ---------------------------------------------------------------------------------- report
def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "**missed**"


def top_lines(text: str, n: int = 22) -> str:
    lines = text.strip().splitlines()
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    return "\n".join(ln.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
                     for ln in lines[start:start + n])


def _sec(ms) -> str:
    return "?" if ms is None else f"{ms / 1000:.2f}"


def page_breakdown(pg: dict) -> dict:
    """The phases of one page load (ms since navigation start)."""
    reacts = {}
    for r in pg.get("reacts", []):
        reacts.setdefault(r["id"], r)
    long = pg.get("long", [])
    parse = max((d for t, d in long if pg["plotly_end"] and pg["update_end"]
                 and pg["plotly_end"] - 50 <= t <= pg["update_end"]), default=0.0)
    after = max((d for t, d in long if t >= pg["drawn"] - 50), default=0.0)
    return {"reacts": reacts, "parse": parse, "after": after}


def markdown(res: dict, n: int, repeats: int, argv: list[str]) -> str:
    pop = res["populate"]
    stores = res["stores"]
    lines = [
        f"## Dashboard at scale: {n:,} runs, sqlite and an MLflow server",
        "",
        f"{n:,} synthetic trial runs ({pop['failed']} FAILED), two methods, one sweep parent "
        "(RUNNING, as during a live sweep); the experiment and the parent created through "
        f"`MlflowClient` ({pop['client_seconds']:.1f} s), the trials written with "
        f"`_mlflow_bulk.bulk_log_runs` ({pop['bulk_seconds']:.1f} s; {pop['seconds']:.1f} s "
        "in all). `sqlite`: the store read in this process; `server`: `mlflow server "
        "--workers 1` on 127.0.0.1 over a copy of the same database. Times in seconds: the "
        f"first call, then the median of {repeats} more. In-process rows call the dashboard's "
        "own `load_experiment` and the page's `refresh` callback with a new page's inputs (all "
        "sweeps, both methods, accuracy vs size, coloured by method); each call gets, as "
        "`rendered`, the JSON round trip of what the previous one returned. The new runs are "
        f"logged through `MlflowClient` ({BATCH} per batch: `create_run`, `log_batch`, "
        "`set_terminated`); each batch is followed by one refresh, which must rebuild the "
        "figures, then one with nothing new. Browser rows: `lilnetx dashboard` as a "
        "subprocess, headless Chromium 156 (software WebGL: SwiftShader), a new browser "
        "context per page (empty cache), navigation start to the frame in which the Pareto "
        "figure is first drawn (`dcc.Graph`'s `Plotly.react` done, seen by a "
        "`requestAnimationFrame` loop).",
        "",
        "| store | step | first | median | target | |",
        "|---|---|---:|---:|---:|---|",
    ]
    for store, s in stores.items():
        b = s["browser"]
        dur = b["during_importance"]["drawn"] / 1000
        rows = [
            (f"first full read, `load_experiment` ({s['full_load']['runs']:,} runs, "
             f"{s['full_load']['queries']} queries; not a target: the dashboard preloads it "
             "at start)", s["full_load"]["seconds"], None, None),
            (f"a new page's first poll (the first page builds the 3 figures, later ones get "
             f"them from the figure cache pages share; "
             f"{s['new_page']['json_bytes'] / 1e6:.2f} MB of JSON)",
             s["new_page"]["first"], s["new_page"]["median"], None),
            (f"refresh, nothing new ({s['quiet']['queries']} queries, "
             f"{s['quiet']['read_median']:.0f} runs read)",
             s["quiet"]["first"], s["quiet"]["median"], TARGETS["quiet"]),
            (f"refresh after {BATCH} new runs (rebuilds the 3 figures; "
             f"{s['new']['queries']} queries, {s['new']['read_median']:.0f} runs read)",
             s["new"]["first"], s["new"]["median"], TARGETS["new"]),
            (f"&nbsp;&nbsp;then Dash's JSON encoding of that answer "
             f"({s['new']['json_bytes'] / 1e6:.2f} MB)", None, s["new"]["json_median"], None),
            (f"refresh, nothing new, right after the {BATCH} runs "
             f"({s['after']['queries']} queries, {s['after']['read_median']:.0f} runs read)",
             s["after"]["first"], s["after"]["median"], TARGETS["after"]),
            (f"refresh, nothing new, {s['late']['idle_minutes']:.0f} min after the last run "
             f"ended ({s['late']['queries']} queries, {s['late']['read_median']:.0f} runs "
             "read)", s["late"]["first"], s["late"]["median"], TARGETS["after"]),
            (f"{BATCH} new runs logged through `MlflowClient` (not a target)",
             s["log_batch"]["first"], s["log_batch"]["median"], None),
            ("Chromium: dashboard start to the first drawn figure (cold: includes the "
             "preload; not a target)", b["cold"], None, None),
            ("Chromium: a page opened while the importance thread (fANOVA) of the first "
             "page runs", dur, None, None),
            ("Chromium: first page load (dashboard idle), navigation to the first drawn "
             "Pareto figure", b["drawn"]["first"], b["drawn"]["median"], TARGETS["browser"]),
        ]
        for label, first, med, target in rows:
            f = "" if first is None else f"{first:.3f}"
            m = "" if med is None else f"{med:.3f}"
            t = "" if target is None else f"<= {target:g}"
            v = "" if target is None else verdict(med, target)
            lines.append(f"| {store} | {label} | {f} | {m} | {t} | {v} |")
    lines += ["", "Targets:", ""]
    for store, s in stores.items():
        for key, what, value in (
                ("quiet", "refresh with nothing new", s["quiet"]["median"]),
                ("new", f"refresh after {BATCH} new runs", s["new"]["median"]),
                ("after", f"refresh with nothing new right after {BATCH} new runs",
                 s["after"]["median"]),
                ("after", f"refresh with nothing new, store idle for "
                 f"{s['late']['idle_minutes']:.0f} min after the batches",
                 s["late"]["median"]),
                ("browser", "first page load in Chromium", s["browser"]["drawn"]["median"])):
            met = value <= TARGETS[key]
            lines.append(f"- {store}, {what}: target {'met' if met else '**missed**'} "
                         f"({value:.3f} s {'<=' if met else '>'} {TARGETS[key]:g} s).")
        tot = s["new"]["total_median"]
        if s["new"]["median"] <= TARGETS["new"] < tot:
            lines.append(f"- {store}: with Dash's JSON encoding the refresh after {BATCH} "
                         f"runs takes {tot:.3f} s, over the {TARGETS['new']:g} s target.")
    lines += ["", "Where the time goes:", ""]
    for store, s in stores.items():
        q, nw, af, b = s["quiet"], s["new"], s["after"], s["browser"]
        mp = b["median_page"]
        bd = page_breakdown(mp)
        fig_s = nw["median"] - nw["cache_seconds_median"]
        lines.append(
            f"- **{store}, refreshes.** With nothing new, a refresh is "
            f"{q['queries']} queries (the RUNNING runs; the runs ended since the last "
            "watermark less 30 s, leaving out by id the ones already read), "
            f"{q['read_median']:.0f} runs read (the sweep parent, RUNNING), "
            f"{q['cache_seconds_median']:.3f} s in `RunCache.refresh`, then `PreventUpdate`. "
            f"After {BATCH} new runs the median poll ({nw['median']:.3f} s: the `refresh` "
            "callback, which draws the Pareto view, then the `overview` callback that its "
            "`rendered` store triggers, parallel coordinates and hypervolume) spends "
            f"{nw['cache_seconds_median']:.3f} s in `RunCache.refresh`, which read "
            f"{nw['read_median']:.0f} runs (first batch: {nw['read_first']}), and "
            f"{fig_s:.3f} s building the figures; Python's cyclic garbage collector ran "
            f"{nw['gc_seconds_median']:.3f} s of it ({nw['gc_full']} full collection(s) over "
            f"the {nw['n']} polls). Right after a batch a poll with nothing new reads "
            f"{af['read_median']:.0f} run(s) ({af['cache_seconds_median']:.3f} s), "
            f"{s['late']['idle_minutes']:.0f} min later {s['late']['read_median']:.0f} "
            f"({s['late']['cache_seconds_median']:.3f} s).")
        r = bd["reacts"]

        def react(name, r=r):
            return f"{r[name]['sync'] / 1000:.2f}" if name in r else "?"

        lines.append(
            f"- **{store}, first page load** (the median one, {_sec(mp['drawn'])} s): Dash's "
            f"layout answered at {_sec(mp['layout_end'])} s, plotly.js (4.8 MB) was loaded at "
            f"{_sec(mp['plotly_end'])} s and compiled in a {bd['parse'] / 1000:.2f} s task; "
            f"the `refresh` callback, sent at {_sec(mp['update_start'])} s, answered at "
            f"{_sec(mp['update_end'])} s ({(mp['update_bytes'] or 0) / 1e6:.2f} MB); "
            f"`Plotly.react` took {react('pareto')} s for the Pareto figure ({mp['traces']} "
            f"traces, {mp['points']:,} points{', WebGL' if mp['gl'] else ''}); the frame that "
            f"shows it starts at {_sec(mp['drawn'])} s and is followed by a "
            f"{bd['after'] / 1000:.2f} s main-thread task (drawing it, software WebGL). The "
            "parallel coordinates and the hypervolume figure come after it, from the "
            "`overview` callback. plotly.js is preloaded from the start of the page and run "
            "once the first callback request is out, so its compiling overlaps the server's "
            "answer (until then `window.Plotly` is a promise that `dcc.Graph` waits on). "
            f"Page summary: \"{mp['summary']}\"."
            + (f" Page errors: {mp['errors'][:2]}." if mp["errors"] else ""))
        imp = b.get("importance_seconds")
        dur = b["during_importance"]
        lines.append(
            f"- **{store}, dashboard process.** It answered HTTP {b['http']:.1f} s after it "
            "started"
            + (f" (the MLflow server answered /health {s['server_start']:.1f} s after it "
               "started)" if "server_start" in s else "")
            + f"; the first page, opened then, drew {b['cold']:.1f} s after the start (it "
            "waits for the preload, which shares the GIL with the page's requests). That "
            "page's render started the fANOVA importance thread, "
            + (f"done {imp:.0f} s later (seen through the page's 5 s poll)" if imp else
               "not done within 300 s")
            + f"; a page opened meanwhile drew at {dur['drawn'] / 1000:.2f} s, its `refresh` "
            f"answered at {_sec(dur['update_end'])} s against {_sec(mp['update_end'])} s with "
            "the dashboard idle (the fANOVA thread holds the GIL part of the time).")
    lines.append("")
    causes = []
    for store, s in stores.items():
        nw, mp = s["new"], s["browser"]["median_page"]
        if nw["median"] > TARGETS["new"]:
            causes.append(
                f"- {store}, refresh after {BATCH} new runs ({nw['median']:.2f} s): reading "
                f"{nw['read_median']:.0f} runs for {BATCH} new ones "
                f"({nw['cache_seconds_median']:.2f} s: MLflow builds an object for every tag, "
                "param and metric row of every run the \"ended since\" query returns) plus "
                f"rebuilding the three figures over all {s['runs_after']:,} runs "
                f"({nw['median'] - nw['cache_seconds_median']:.2f} s: plotly validates and "
                "deep-copies every list given to a trace, and the Pareto figure formats a "
                "hover text for every run); cProfile below.")
        worst = max((s["after"], s["late"]), key=lambda x: x["median"])
        if worst["median"] > TARGETS["after"]:
            causes.append(
                f"- {store}, refresh with nothing new after a burst of runs "
                f"({s['after']['median']:.2f} s right after, {s['late']['median']:.2f} s "
                f"{s['late']['idle_minutes']:.0f} min later): `RunCache.refresh`'s \"ended "
                "since\" query (`attributes.end_time > watermark - 30 s`, the watermark being "
                f"the newest end time seen) returns the {worst['read_median']:.0f} runs that "
                "ended in the 30 s before the newest one on every poll, already cached and "
                "unchanged, and MLflow builds every one of them again"
                + (" (through the REST API: the server serialises them, the client parses "
                   "them)" if store == "server" else "")
                + "; the window only moves when a newer run ends.")
        if s["browser"]["drawn"]["median"] > TARGETS["browser"]:
            bd = page_breakdown(mp)
            r = bd["reacts"]
            gl = sum(r[k]["sync"] for k in ("parcoords", "hv") if k in r) / 1000
            causes.append(
                f"- {store}, first page load ({s['browser']['drawn']['median']:.2f} s): the "
                f"browser. The callback's answer arrives at {_sec(mp['update_end'])} s "
                f"(building and encoding {(mp['update_bytes'] or 0) / 1e6:.1f} MB of figure "
                "JSON; in process a new page's callback takes "
                f"{s['new_page']['median']:.2f} s plus the encoding), and the Pareto figure "
                f"is drawn in the same main-thread task as the parallel coordinates and the "
                f"hypervolume figure, whose `Plotly.react` calls take {gl:.2f} s together "
                f"({mp['points']:,} parallel-coordinates lines in software WebGL; as many "
                "SVG markers in the hypervolume figure). Not the run reading: the runs are in "
                "memory.")
    if causes:
        lines += ["Causes of the missed targets:", ""] + causes + [""]
    for store, s in stores.items():
        for key, prof in s.get("profiles", {}).items():
            what = {"quiet": "a refresh with nothing new",
                    "new": f"a refresh after {BATCH} new runs",
                    "after": f"a refresh with nothing new right after {BATCH} new runs",
                    "browser": "the `refresh` callback of a new page (figures and JSON "
                               "encoding)"}[key]
            lines += [f"Profile of {what}, {store} (cProfile, cumulative):", "", "```",
                      top_lines(prof), "```", ""]
    la = [f"{res['load_start']} at the start"]
    for store, s in stores.items():
        la.append(f"{s['load_before']} before and {s['browser']['load_after']} after {store}")
    lines += [machine_line() + " Load averages (1, 5, 15 min): " + "; ".join(la) + " (the "
              "machine is shared; the MLflow server, the dashboard and Chromium run on the same "
              f"cores). The whole benchmark took {res['total_seconds'] / 60:.1f} min.", "",
              f"Reproduce: `{command_line('benchmarks/dashboard_scale.py', reproduce_args(argv))}`"]
    return "\n".join(lines)


def reproduce_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--keep DIR`` (where the files went does not change the numbers)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--keep":
            skip = True
        elif not a.startswith("--keep="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stores", default="sqlite,server",
                    help="comma-separated: sqlite, server (default both)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--keep", default=None, help="log into this directory and keep it")
    args = ap.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    res = run(args.runs, args.repeats, stores, args.keep)
    if args.keep:
        with open(Path(args.keep) / "results.json", "w") as f:
            json.dump(res, f, indent=1, default=str)
    publish(markdown(res, args.runs, args.repeats, argv), args.out, SECTION,
            write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
