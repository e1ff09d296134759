"""``lilnetx report``: a self-contained HTML page and a PNG from a real MLflow sqlite store of
synthetic sweep runs (two methods, one failed run, a hostile run name, a registered model).

The expected budget table and fronts are computed here by brute force; the browser test opens
the page from ``file://`` in Debian's chromium and keeps docs/screenshots/report.png."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
from _require import require

from explorer import cli

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
EXPERIMENT = 'report <b>&"test"</b>'
SWEEP = "demo-20260101-000000-abc123"
HOSTILE = "<script>alert(1)</script>"
HOSTILE_PARAM = "<img src=x onerror=alert(2)>"
MODEL = "lenet5_small"
DENSE = 85544
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
LILNETX = str(Path(sys.executable).with_name("lilnetx"))
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "report.png"
OBJECTIVES = {"accuracy": "max", "size_bytes": "min"}


def synthetic(i: int, rng: random.Random) -> tuple[str, dict, dict]:
    """(method, params, metrics) of trial ``i``: smaller files cost accuracy."""
    method = "lilnetx" if i % 2 == 0 else "quant"
    if method == "lilnetx":
        lam = 10 ** rng.uniform(-3, 1)
        params = {"lambda_rate": lam, "lambda_sparsity": 10 ** rng.uniform(-6, -3),
                  "lr": 0.01, "epochs": 3, "model": "lenet5"}
        squeeze = 5 + 40 * (math.log10(lam) + 3) / 4 * rng.uniform(0.8, 1.2)
    else:
        bits = (2, 3, 4, 6, 8)[(i // 2) % 5]
        params = {"bits": bits, "lr": rng.choice([0.01, 0.02]), "epochs": 3, "model": "lenet5"}
        squeeze = 32 / bits * rng.uniform(0.9, 1.1)
    size = round(DENSE / squeeze)
    acc = round(0.91 - 0.003 * squeeze * rng.uniform(0.5, 1.5), 4)
    sparsity = rng.uniform(0, 0.6)
    metrics = {"accuracy": acc, "val_accuracy": round(acc + rng.gauss(0, 0.01), 4),
               "size_bytes": size, "dense_bytes": DENSE, "compression_ratio": DENSE / size,
               "latency_ms": 0.16 * rng.uniform(0.8, 1.2), "flops": round(66600 * (1 - sparsity)),
               "slice_sparsity": sparsity, "weight_sparsity": sparsity}
    return method, params, metrics


def log_sweep(c, exp_id: str, sweep: str, start: int, trials: list[dict]) -> list[str]:
    """A sweep parent and its trial runs (``{name, method, params, metrics, status}``)."""
    from mlflow.entities import Metric, Param, RunTag

    from explorer import tracking

    parent = c.create_run(exp_id, run_name=sweep, start_time=start, tags={
        tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: sweep,
        tracking.TAG_OBJECTIVES: json.dumps(OBJECTIVES)})
    ids = []
    for i, t in enumerate(trials):
        when = start + 1000 + 60_000 * i
        run = c.create_run(exp_id, run_name=t["name"], start_time=when, tags={
            tracking.TAG_ROLE: "trial", tracking.TAG_SWEEP: sweep,
            tracking.TAG_METHOD: t["method"], tracking.TAG_TRIAL: str(i),
            tracking.TAG_PARENT: parent.info.run_id})
        failed = t.get("status") == "FAILED"
        ms = [Metric("val_accuracy", 0.1, when, 1)] if failed else [
            Metric(k, float(v), when + 50_000, 0) for k, v in t["metrics"].items()]
        c.log_batch(run.info.run_id, metrics=ms,
                    params=[Param(k, str(v)) for k, v in t["params"].items()],
                    tags=[RunTag(tracking.TAG_ERROR, "TrainingDiverged: loss is nan")]
                    if failed else [])
        c.set_terminated(run.info.run_id, t.get("status", "FINISHED"), end_time=when + 55_000)
        ids.append(run.info.run_id)
    c.set_terminated(parent.info.run_id, "FINISHED", end_time=start + 60_000 * len(trials))
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The sqlite store: an older experiment whose only trial failed, then the main one."""
    from explorer import tracking

    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = tracking.client(uri)
    log_sweep(c, tracking.ensure_experiment(uri, "all-failed"), "old-sweep", T0 - 86_400_000,
              [{"name": "old-t000", "method": "lilnetx", "params": {"lr": 0.01},
                "status": "FAILED"}])
    rng = random.Random(3)
    trials = []
    for i in range(12):
        method, params, metrics = synthetic(i, rng)
        trials.append({"name": f"{SWEEP}-t{i:03d}", "method": method, "params": params,
                       "metrics": metrics})
    # the smallest lilnetx file with the best validation accuracy at its size: on the front
    small = min(t["metrics"]["size_bytes"] for t in trials)
    trials.append({"name": HOSTILE, "method": "lilnetx",
                   "params": {**trials[0]["params"], "note": HOSTILE_PARAM},
                   "metrics": {**trials[0]["metrics"], "size_bytes": small - 7,
                               "accuracy": 0.7, "val_accuracy": 0.71}})
    trials.append({"name": f"{SWEEP}-t013", "method": "quant", "params": {"bits": 2},
                   "status": "FAILED"})
    sizes = [t["metrics"]["size_bytes"] for t in trials if "metrics" in t]
    assert len(set(sizes)) == len(sizes)
    ids = log_sweep(c, tracking.ensure_experiment(uri, EXPERIMENT), SWEEP, T0, trials)
    for t, rid in zip(trials, ids, strict=True):
        t["run_id"] = rid
    done = [t for t in trials if t.get("status") != "FAILED"]
    chosen = max(done, key=lambda t: t["metrics"]["val_accuracy"])
    c.create_registered_model(MODEL)
    c.create_model_version(MODEL, f"runs:/{chosen['run_id']}/model", run_id=chosen["run_id"])
    return {"uri": uri, "root": root, "trials": trials, "done": done, "registered": chosen}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    """``lilnetx report --json`` in this process: (JSON answer, HTML text, HTML path)."""
    out = tmp_path_factory.mktemp("report-out") / "report.html"
    argv = ["report", "--tracking-uri", store["uri"], "--out", str(out), "--json"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(argv) == 0
    return json.loads(buf.getvalue()), out.read_text(encoding="utf-8"), out


class Cells(HTMLParser):
    """Budget rows (budget -> method -> (run id, text)) and front tables (method -> run ids)."""

    def __init__(self):
        super().__init__()
        self.budgets: dict[float, dict[str, list]] = {}
        self.fronts: dict[str, list[str]] = {}
        self._row = self._cell = self._front = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-budget" in a:
            self._row = self.budgets.setdefault(float(a["data-budget"]), {})
        elif tag == "td" and self._row is not None and "data-method" in a:
            self._cell = self._row.setdefault(a["data-method"], [a["data-run"], ""])
        elif tag == "table" and "front" in a.get("class", ""):
            self._front = self.fronts.setdefault(a["data-method"], [])
        elif tag == "tr" and self._front is not None and "data-run" in a:
            self._front.append(a["data-run"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "table":
            self._row = self._front = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def expected_budgets(sizes: list[int]) -> list[float]:
    series = sorted(m * 10.0 ** e for e in range(0, 12) for m in (1, 2, 5))
    first = next(i for i, b in enumerate(series) if b >= min(sizes))
    last = next(i for i, b in enumerate(series) if b >= max(sizes))
    return series[first:last + 1]


def test_writes_html_and_png(store, report):
    out, _, path = report
    assert out["html"] == str(path) and Path(out["png"]) == path.with_suffix(".png")
    assert out["experiment"] == EXPERIMENT and out["sweep"] == SWEEP
    assert (out["runs"], out["finished"], out["failed"]) == (14, 13, 1)
    assert out["selected_on"] == "val_accuracy"
    png = Path(out["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 500


def test_self_contained(report):
    import plotly

    _, page, _ = report
    external = re.compile(r"""(?:src|href)\s*=\s*["'`]?\s*(?:https?:)?//|url\(\s*["']?"""
                          r"""\s*(?:https?:)?//|@import""", re.I)
    # outside inline scripts: no external reference at all, no script or style file
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S | re.I)
    assert not external.search(markup)
    assert 'src="http' not in markup and 'href="http' not in markup
    assert not re.search(r"<(link|iframe|img|object|embed)\b", markup, re.I)
    assert not re.search(r"<script\b[^>]*\bsrc=", page, re.I)
    # inside: plotly.js inline, once; its own inert strings (modebar logo link, map
    # attributions, none of which this page draws) are the only URL-looking text
    bundle = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()
    assert page.count(bundle[-2000:]) == 1
    assert len(external.findall(page)) == len(external.findall(bundle))


def test_budget_table_is_the_brute_force_best(store, report):
    from lilnetx.metrics import format_metric, format_value

    out, page, _ = report
    cells = Cells()
    cells.feed(page)
    done = store["done"]
    budgets = expected_budgets([t["metrics"]["size_bytes"] for t in done])
    assert list(cells.budgets) == budgets == [b["budget"] for b in out["budgets"]]
    assert budgets[0] < 10_000 < budgets[-1]
    for b in budgets:
        assert f"&le; {format_value('bytes', b).replace('.0 ', ' ')}<" in page
        for method in ("lilnetx", "quant"):
            fits = [t for t in done if t["method"] == method and t["metrics"]["size_bytes"] <= b]
            run_id, text = cells.budgets[b][method]
            if not fits:
                assert (run_id, text) == ("", "-")
                continue
            best = max(fits, key=lambda t: t["metrics"]["val_accuracy"])
            assert run_id == best["run_id"]
            assert text.startswith(format_metric("accuracy", best["metrics"]["accuracy"]))
            assert format_value("bytes", best["metrics"]["size_bytes"]) in text
            label = best["name"].removeprefix(SWEEP + "-")
            assert label in text and "x smaller" in text
    assert "selected on validation accuracy, reported on the test set" in page


def test_front_runs(store, report):
    out, page, _ = report
    cells = Cells()
    cells.feed(page)
    for method in ("lilnetx", "quant"):
        mine = [t["metrics"] | {"id": t["run_id"]} for t in store["done"]
                if t["method"] == method]
        front = {p["id"] for p in mine if not any(
            q["val_accuracy"] >= p["val_accuracy"] and q["size_bytes"] <= p["size_bytes"]
            and (q["val_accuracy"], q["size_bytes"]) != (p["val_accuracy"], p["size_bytes"])
            for q in mine)}
        assert set(cells.fronts[method]) == front == {r["run_id"] for r in out["fronts"][method]}
        assert len(cells.fronts[method]) == len(front)  # each once
    assert f"{len(cells.fronts['lilnetx'])} runs on the front" in page


def test_registered_run_is_marked(store, report):
    out, page, _ = report
    rid = store["registered"]["run_id"]
    assert out["registered"] == {rid: [f"{MODEL} v1"]}
    row = re.search(rf'<tr data-run="{rid}">.*?</tr>', page, re.S)
    assert row and f"registered as {MODEL} v1" in row.group(0)


def test_user_strings_are_escaped(report):
    import html

    _, page, _ = report
    assert HOSTILE not in page and "<script>alert" not in page
    assert html.escape(HOSTILE) in page
    assert HOSTILE_PARAM not in page and "<img" not in page
    assert "<b>&" not in page and html.escape(EXPERIMENT) in page


def test_plain_output_is_one_line(store, tmp_path, capsys):
    out = tmp_path / "mine.html"
    assert cli.main(["report", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT,
                     "--sweep", SWEEP, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"wrote {out} and {tmp_path / 'mine.png'}"]
    assert out.stat().st_size > 100_000 and (tmp_path / "mine.png").is_file()


@pytest.mark.parametrize("case", ["unknown experiment", "unknown sweep", "bad sweep",
                                  "no finished run", "missing store", "out is a dir",
                                  "no parent dir", "not html"])
def test_bad_input_exits_2(case, store, tmp_path, capsys):
    out = str(tmp_path / "r.html")
    args = {"unknown experiment": ["--experiment", "nope"],
            "unknown sweep": ["--sweep", "nope-123"],
            "bad sweep": ["--sweep", "x' or 1=1"],
            "no finished run": ["--experiment", "all-failed"]}.get(case, [])
    uri = store["uri"]
    if case == "missing store":
        uri = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    if case == "out is a dir":
        out = str(tmp_path)
    elif case == "no parent dir":
        out = str(tmp_path / "missing" / "r.html")
    elif case == "not html":
        out = str(tmp_path / "r.png")
    assert cli.main(["report", "--tracking-uri", uri, "--out", out, *args, "--json"]) == 2
    got = capsys.readouterr()
    assert got.out == ""
    lines = got.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), got.err
    word = {"unknown experiment": "'nope'", "unknown sweep": "nope-123", "bad sweep": "--sweep",
            "no finished run": "no finished run", "missing store": "no tracking database",
            "out is a dir": "directory", "no parent dir": "does not exist",
            "not html": ".html"}[case]
    assert word in lines[0]
    assert not (tmp_path / "typo").exists() and not (tmp_path / "r.png").exists()


def test_console_script_error(tmp_path, subprocess_env):
    proc = subprocess.run([LILNETX, "report", "--tracking-uri",
                           f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "r.html")],
                          cwd=tmp_path, env=subprocess_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: no tracking database at ")


@pytest.mark.browser
def test_report_in_chromium(store, tmp_path):
    """Opened from file:// with no network: the plot is drawn on a log x axis."""
    chromium = "/usr/bin/chromium"
    require(os.path.exists(chromium),
            f"Debian chromium is not installed at {chromium} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from dashboards.report import build_report

    out = build_report(store["uri"], EXPERIMENT, SWEEP, str(tmp_path / "report.html"),
                       now=datetime(2026, 1, 2, tzinfo=UTC))
    url = Path(out["html"]).resolve().as_uri()
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(60_000)
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("() => { const gd = document.querySelector("
                                   "'#fig-pareto.js-plotly-plot'); return gd && gd._fullData "
                                   "&& gd._fullData.length > 0; }")
            state = page.evaluate("""() => { const gd = document.getElementById('fig-pareto');
                return {type: gd._fullLayout.xaxis.type, traces: gd._fullData.length,
                        points: document.querySelectorAll('#fig-pareto .point').length}; }""")
            page.wait_for_load_state("networkidle")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert state["type"] == "log"
    assert state["traces"] >= 4 and state["points"] == len(store["done"])
    assert not errors, errors
    assert requests and all(urlparse(u).scheme in ("file", "data", "blob") for u in requests), \
        requests
    assert 20_000 < SCREENSHOT.stat().st_size < 1_500_000


def test_missing_matplotlib_is_named(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["report", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: `lilnetx report` needs matplotlib") and "\n" not in err
