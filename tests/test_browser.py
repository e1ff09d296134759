"""The explorer in Debian's chromium (Playwright): ``lilnetx dashboard`` served on loopback over
the real sweep of tests/_dashboard_sweep.py; click a front point, change an axis, export to the
registry, live refresh. Keeps a screenshot in docs/screenshots/dashboard.png."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from _dashboard_sweep import EXPERIMENT, get_sweep
from _require import require

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sweep]

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LILNETX = str(Path(sys.executable).with_name("lilnetx"))
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "dashboard.png"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return get_sweep(tmp_path_factory.mktemp("dash-sweep"))


@pytest.fixture(scope="module")
def server(sweep, tmp_path_factory, subprocess_env):
    """``lilnetx dashboard`` on a free loopback port, its own process group, stopped by PID."""
    port = free_port()
    cwd = tmp_path_factory.mktemp("dash-server")
    log = open(cwd / "server.log", "w+")  # closed in the finally block
    env = {**subprocess_env, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [LILNETX, "dashboard", "--tracking-uri", sweep.uri, "--experiment", EXPERIMENT,
         "--host", HOST, "--port", str(port)],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"dashboard exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                log.seek(0)
                pytest.fail(f"dashboard did not answer at {url}:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def page():
    require(os.path.exists(CHROMIUM),
            f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            browser.close()


PLOT = "() => document.querySelector('#pareto .js-plotly-plot')"


def plot_state(pg) -> dict:
    """Trace names and run ids of the Pareto graph, and its x-axis title."""
    return pg.evaluate(f"""() => {{
        const gd = ({PLOT})();
        return {{traces: gd.data.map(t => ({{name: t.name, x: t.x,
                                             ids: (t.customdata || []).map(c => c[0])}})),
                 xtitle: gd.layout.xaxis.title.text}};
    }}""")


def test_explorer_in_chromium(sweep, server, page):
    from dashboards.figures import label
    from explorer import tracking

    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    refreshes: list[float] = []

    def on_response(resp):  # a refresh that came back
        req = resp.request
        if urlparse(req.url).path == "/_dash-update-component" and resp.status == 200:
            body = json.loads(req.post_data or "{}")
            if "refresh.n_intervals" in body.get("changedPropIds", []):
                refreshes.append(time.time())

    page.on("response", on_response)
    page.goto(server)

    # the real sweep's finished runs are the points of #pareto
    page.wait_for_selector("#pareto .scatterlayer .point")
    state = plot_state(page)
    names = {r.info.run_id: r.info.run_name for r in sweep.finished}
    plotted = [i for t in state["traces"] for i in t["ids"]]
    assert sorted(plotted) == sorted(names)
    assert page.locator("#pareto .scatterlayer .point").count() == 4
    assert page.inner_text("#summary") == "5 runs: 4 finished, 0 running, 1 failed"
    assert state["xtitle"] == label("size_bytes")
    # the parallel coordinates and the hypervolume follow the Pareto view; plotly.js is loaded
    # once, by the page's head (dcc.Graph found window.Plotly and did not load its own copy)
    page.wait_for_function("() => ['parcoords', 'hv'].every(id => { const g = "
                           "document.querySelector('#' + id + ' .js-plotly-plot'); "
                           "return g && g.data && g.data.length > 0; })")
    plotly_scripts = page.evaluate("() => [...document.scripts].map(s => s.src)"
                                   ".filter(s => /plotly[^/]*\\.js/.test(s))")
    assert len(plotly_scripts) == 1 and "/_lilnetx/plotly-" in plotly_scripts[0], plotly_scripts

    # click a point of the front: the details show that run
    k = next(i for i, t in enumerate(state["traces"]) if t["name"].endswith("front points"))
    front_ids = state["traces"][k]["ids"]
    box = page.locator("#pareto .scatterlayer .trace").nth(k).locator(".point").first \
        .bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#details-title")
    title = page.inner_text("#details-title")
    rid = next(i for i, n in names.items() if n == title)
    assert rid in front_ids
    page.wait_for_selector("#details-layers")
    assert page.locator("#export-button").is_visible()
    # the numbers that matter first, in their units; hover text in the same units
    run = next(r for r in sweep.finished if r.info.run_id == rid)
    from lilnetx.metrics import format_metric

    assert page.inner_text("#card-size").splitlines()[1] == format_metric(
        "size_bytes", run.data.metrics["size_bytes"])
    assert "smaller than fp32" in page.inner_text("#card-size")
    assert page.inner_text("#card-accuracy").splitlines()[1].endswith("%")
    assert " ms" in page.inner_text("#card-latency")
    hover = page.evaluate(f"() => ({PLOT})().data.flatMap(t => t.hovertext || [])")
    assert hover and all("smaller" in h and "%" in h and " ms" in h for h in hover), hover[:2]

    # another x axis keeps the selection (details and the ring on the new figure)
    page.click("#x-axis")
    page.click(".dash-dropdown-options [role=option]:has(input[value='latency_ms'])")
    page.wait_for_function(f"() => ({PLOT})().layout.xaxis.title.text === "
                           f"{json.dumps(label('latency_ms'))}")
    assert page.inner_text("#x-axis-value") == label("latency_ms")
    assert page.inner_text("#details-title") == title
    page.wait_for_function(f"() => ({PLOT})().data.some(t => t.name === 'selected')")
    ring = next(t for t in plot_state(page)["traces"] if t["name"] == "selected")
    latency = next(r for r in sweep.finished if r.info.run_id == rid).data.metrics["latency_ms"]
    assert ring["x"] == [pytest.approx(latency)]

    # export the selected run from the page
    name = "browser_lenet5"
    page.fill("#export-name", name)
    page.click("#export-button")
    page.wait_for_selector("#export-uri", timeout=180_000)
    assert page.inner_text("#export-uri") == f"models:/{name}@champion"
    mv = tracking.client(sweep.uri).get_model_version_by_alias(name, "champion")
    assert mv.tags["source_run"] == rid and "champion" in mv.aliases

    # the live refresh (every 5 s) keeps the selection, the axis and the export result
    before = len(refreshes)
    page.wait_for_timeout(7_000)
    assert len(refreshes) > before, "no refresh in 7 s"
    page.wait_for_load_state("networkidle")
    assert page.inner_text("#details-title") == title
    assert page.inner_text("#x-axis-value") == label("latency_ms")
    state = plot_state(page)
    assert state["xtitle"] == label("latency_ms")
    assert any(t["name"] == "selected" for t in state["traces"])
    assert page.inner_text("#export-uri") == f"models:/{name}@champion"
    assert not errors, errors

    page.evaluate("window.scrollTo(0, 0); document.getElementById('details').scrollTop = 0")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert 10_000 < SCREENSHOT.stat().st_size < 500_000


def test_download_route(sweep, server):
    from explorer import tracking

    rid = sweep.finished[0].info.run_id
    with urllib.request.urlopen(f"{server}download/{rid}/model.lnx", timeout=30) as r:
        body = r.read()
    local = tracking.client(sweep.uri).download_artifacts(rid, "model.lnx",
                                                          str(sweep.root / "dl-browser"))
    assert body == Path(local).read_bytes() and body[:4] == b"LNX\0"
    for bad in ("0" * 32, sweep.failed[0].info.run_id):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server}download/{bad}/model.lnx", timeout=30)
        assert e.value.code == 404, bad
    # a path in place of the run id never reaches a file (Dash answers with its page)
    try:
        with urllib.request.urlopen(f"{server}download/..%2F..%2Fmlflow.db/model.lnx",
                                    timeout=30) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        assert e.code == 404
    else:
        assert body.lstrip().startswith(b"<!DOCTYPE html>")


# ---------------------------------------------------------------- a synthetic experiment


@pytest.fixture(scope="module")
def synthetic_server(tmp_path_factory, subprocess_env):
    """The dashboard over 40 synthetic runs (two methods) written with the bulk writer of the
    benchmarks: enough finished runs for the importance panel."""
    import random as _random

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _mlflow_bulk import bulk_log_runs
    from dashboard_figures import synthetic_run

    from explorer import tracking

    root = tmp_path_factory.mktemp("dash-synthetic")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment(uri, "synthetic")
    c = tracking.client(uri)
    parent = c.create_run(exp_id, run_name="syn", tags={
        tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: "syn",
        tracking.TAG_OBJECTIVES: json.dumps({"accuracy": "max", "size_bytes": "min"})})
    c.set_terminated(parent.info.run_id, "FINISHED")
    rng, runs, t0 = _random.Random(1), [], int(time.time() * 1000) - 3_600_000
    for i in range(40):
        method, params, metrics, _, _ = synthetic_run(i, rng)
        runs.append({"run_name": f"syn-t{i:03d}", "start_time": t0 + i * 1000,
                     "end_time": t0 + i * 1000 + 500, "status": "FINISHED",
                     "tags": {tracking.TAG_ROLE: "trial", tracking.TAG_SWEEP: "syn",
                              tracking.TAG_METHOD: method, tracking.TAG_TRIAL: str(i),
                              tracking.TAG_PARENT: parent.info.run_id},
                     "params": {k: str(v) for k, v in params.items()},
                     "metrics": {k: [(float(v), t0, 0)] for k, v in metrics.items()}})
    bulk_log_runs(uri, exp_id, runs)
    port = free_port()
    log = open(root / "server.log", "w+")
    proc = subprocess.Popen(
        [LILNETX, "dashboard", "--tracking-uri", uri, "--experiment", "synthetic",
         "--host", HOST, "--port", str(port)], cwd=root,
        env={**subprocess_env, "MLFLOW_DISABLE_TELEMETRY": "true"}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"dashboard did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


IMPORTANCE_SHOT = SCREENSHOT.with_name("importance.png")


def test_units_and_importance_in_chromium(synthetic_server, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(synthetic_server)
    page.wait_for_function(f"() => {{ const g = ({PLOT})(); return g && g._fullData && "
                           "g._fullData.length > 0; }")
    assert page.inner_text("#summary") == "40 runs: 40 finished, 0 running, 0 failed"
    hover = page.evaluate(f"() => ({PLOT})().data.flatMap(t => t.hovertext || [])")
    assert len(hover) == 40
    assert all(" KB, " in h and "x smaller" in h and "%" in h for h in hover), hover[:2]
    assert any("lambda_rate=" in h and "e-" in h and "e+" not in h for h in hover)
    # the importance panel fills in (computed in the server's thread): a bar per objective
    imp = "() => document.querySelector('#importance .js-plotly-plot')"
    page.wait_for_function(f"() => {{ const g = ({imp})(); return g && g.data && "
                           "g.data.length === 2 && g.data[0].type === 'bar'; }",
                           timeout=120_000)
    bars = page.evaluate(f"() => ({imp})().data.map(t => ({{name: t.name, y: t.y, x: t.x}}))")
    from dashboards.figures import label

    # objectives as searched: accuracy on the validation split
    assert [b["name"] for b in bars] == [label("val_accuracy"), label("size_bytes")]
    # the synthetic size falls with lambda_rate: the most important for size among the params
    size = dict(zip(bars[1]["y"], bars[1]["x"], strict=True))
    assert max(size, key=size.get) == "lambda_rate", size
    assert "lilnetx" in page.inner_text("#importance-method")
    # the other method's importances on request
    page.click("#importance-method")
    page.click(".dash-dropdown-options [role=option]:has(input[value='quant'])")
    page.wait_for_function(f"() => {{ const t = ({imp})().layout.title; "
                           "return ((t && t.text) || '').startsWith('quant'); }",
                           timeout=120_000)
    assert not errors, errors
    page.locator("#importance").scroll_into_view_if_needed()
    page.screenshot(path=str(IMPORTANCE_SHOT), full_page=True)
    assert 10_000 < IMPORTANCE_SHOT.stat().st_size < 2_000_000
