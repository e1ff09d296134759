"""``lilnetx report``: a self-contained HTML page of a sweep (plotly.js, CSS and data inline,
no external URL) and a PNG of its main figure beside it (matplotlib). The page: a header; test
accuracy against file size on a log axis, one front per method; the best accuracy per size
budget (chosen on validation accuracy, reported on the test set); the chosen runs (each
method's front as the sweep searched it) with registry versions. User strings are escaped."""

from __future__ import annotations

import dataclasses
import html
import math
import re
from datetime import UTC, datetime
from pathlib import Path

from lilnetx.errors import ConfigError

from .data import RunRecord

SIZE, ACC, VAL = "size_bytes", "accuracy", "val_accuracy"
CSS = """body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
margin:0 auto;max-width:1140px;padding:16px 24px}h1{font-size:22px;margin:0 0 6px}
h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:14px 0 4px}dl{display:grid;grid-template-columns:max-content 1fr;
gap:2px 14px;margin:6px 0}dt{color:#666}dd{margin:0}table{border-collapse:collapse;margin:4px 0}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right;vertical-align:top}
td:not(.l){white-space:nowrap}th{background:#f6f6f6}td.l,th.l{text-align:left}
small{color:#666}.note{color:#555;font-size:13px;max-width:900px}
.reg{color:#0a6b2c;font-weight:600}"""


def _ok(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def usable(runs: list[RunRecord]) -> list[RunRecord]:
    """Finished runs with a test accuracy and a positive file size (what the page plots)."""
    return [r for r in runs if r.status == "FINISHED" and _ok(r.metrics.get(ACC))
            and _ok(r.metrics.get(SIZE)) and r.metrics[SIZE] > 0]


def size_budgets(sizes: list[float]) -> list[float]:
    """Budgets of the 1-2-5 series (100 B, 200 B, 500 B, 1 KB, ...) from the first that holds
    the smallest size to the first that holds them all."""
    pos = [float(s) for s in sizes if _ok(s) and s > 0]
    if not pos:
        return []
    lo, hi = min(pos), max(pos)
    series = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)),
                                           math.floor(math.log10(hi)) + 2) for m in (1, 2, 5)]
    return [v for i, v in enumerate(series) if v >= lo and (i == 0 or series[i - 1] < hi)]


def short_bytes(v: float) -> str:
    """A round size as people write it: ``5 KB``, ``1 MB``, ``2.5 KB``, ``500 B``."""
    from lilnetx.metrics import format_value

    return format_value("bytes", v).replace(".0 ", " ")


def selection_metric(runs: list[RunRecord]) -> str:
    """``val_accuracy`` when every run has one (a choice never made on the test set), else
    ``accuracy``."""
    return VAL if runs and all(_ok(r.metrics.get(VAL)) for r in runs) else ACC


def best_per_budget(runs: list[RunRecord], budgets: list[float],
                    select: str = VAL) -> dict[str, list[RunRecord | None]]:
    """Per method and budget: the run of size <= budget with the highest ``select`` (ties:
    the smaller file), ``None`` when no run fits. ``runs``: as :func:`usable` gives them."""
    out: dict[str, list[RunRecord | None]] = {}
    for m in sorted({r.method for r in runs}):
        mine = [r for r in runs if r.method == m]
        out[m] = [max((r for r in mine if r.metrics[SIZE] <= b), default=None,
                      key=lambda r: (r.metrics[select], -r.metrics[SIZE])) for b in budgets]
    return out


def registered_versions(uri: str, run_ids: list[str]) -> dict[str, list[str]]:
    """Run id -> ``["NAME v3", ...]`` of the MLflow model-registry versions made from it;
    empty when the registry has none (or cannot be searched: the page still renders)."""
    from explorer import tracking

    found: dict[str, list[str]] = {}
    ids = sorted(set(run_ids))
    wanted = set(ids)
    try:
        c = tracking.client(uri)
        for i in range(0, len(ids), 100):
            chunk = ", ".join(f"'{r}'" for r in ids[i:i + 100] if re.fullmatch(r"\w+", r))
            for mv in c.search_model_versions(f"run_id IN ({chunk})") if chunk else []:
                if mv.run_id in wanted:
                    found.setdefault(mv.run_id, []).append(f"{mv.name} v{mv.version}")
    except Exception:  # a store without a registry, a server that refuses the search
        return {}
    return {k: sorted(v) for k, v in found.items()}


def locate(uri: str, experiment: str | None, sweep: str | None) -> tuple[str, str]:
    """(experiment name, sweep id): the named ones, else the newest sweep (of ``experiment``
    or of any experiment). :class:`ConfigError` when there is none."""
    from mlflow.exceptions import MlflowException

    from explorer import tracking

    if sweep is not None and not re.fullmatch(r"[\w.:-]{1,200}", sweep):
        raise ConfigError(f"--sweep must be a sweep id (letters, digits, . _ - :), but got "
                          f"{sweep[:80]!r}")
    try:
        c = tracking.client(uri)
        if experiment is not None:
            exp = c.get_experiment_by_name(experiment)
            if exp is None or exp.lifecycle_stage == "deleted":
                names = [e.name for e in c.search_experiments() if e.name != "Default"]
                raise ConfigError(f"unknown experiment {experiment!r} at {uri} (experiments: "
                                  f"{', '.join(map(repr, names[:10])) or 'none'})")
            ids = [exp.experiment_id]
        else:
            ids = [e.experiment_id for e in c.search_experiments()]
        filt = f"tags.`{tracking.TAG_ROLE}` = 'sweep'"
        if sweep:
            filt += f" and tags.`{tracking.TAG_SWEEP}` = '{sweep}'"
        parents = c.search_runs(ids, filter_string=filt, max_results=1,
                                order_by=["attributes.start_time DESC"]) if ids else []
        if not parents:
            where = f"experiment {experiment!r}" if experiment else uri
            raise ConfigError(f"no sweep {sweep!r} in {where}" if sweep else
                              f"no sweep found in {where}: run `lilnetx sweep` first")
        return (c.get_experiment(parents[0].info.experiment_id).name,
                parents[0].data.tags[tracking.TAG_SWEEP])
    except MlflowException as e:
        raise ConfigError(f"cannot read the tracking store {uri}: {e.message}") from None


def _safe(r: RunRecord) -> RunRecord:
    """A copy for plotly, whose hover and legend text are HTML: names and strings escaped."""
    return dataclasses.replace(
        r, name=html.escape(r.name), method=html.escape(r.method),
        params={k: html.escape(v) if isinstance(v, str) else v for k, v in r.params.items()})


def size_axis(runs: list[RunRecord]) -> dict:
    """Log-axis ticks of the file sizes in KB (the dashboard's), one 1-2-5 step past each end
    so that both ends are labelled."""
    from .figures import axis_units

    sizes = [r.metrics[SIZE] for r in runs]
    return axis_units(SIZE, [*sizes, min(sizes) / 2.5, max(sizes) * 2.5], True)


def main_figure(runs: list[RunRecord]):
    """Test accuracy against file size on a log x axis: one front per method as a step line,
    the other finished runs faded (the dashboard's Pareto view)."""
    from .figures import pareto_figure

    fig = pareto_figure([_safe(r) for r in runs], SIZE, ACC)
    fig.update_xaxes(type="log", **size_axis(runs))
    fig.update_layout(uirevision=None, height=540)
    return fig


def write_png(runs: list[RunRecord], path: Path, title: str) -> None:
    """The main figure drawn with matplotlib (Agg, no display): log size axis, fronts as step
    lines, the other runs faded."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, NullLocator

    from .figures import PALETTE, front_indices, label

    def tex(s: str) -> str:  # no mathtext from a user's `$`
        return s.replace("$", r"\$")

    fig = Figure(figsize=(9, 5.4), dpi=110)
    ax = fig.add_subplot()
    for mi, m in enumerate(sorted({r.method for r in runs})):
        group = [r for r in runs if r.method == m]
        idx = set(front_indices(group, (SIZE, ACC)))
        on = sorted((group[i] for i in idx), key=lambda r: r.metrics[SIZE])
        xy = {k: ([r.metrics[SIZE] for r in rs], [r.metrics[ACC] for r in rs]) for k, rs in
              (("on", on), ("off", [r for i, r in enumerate(group) if i not in idx]))}
        color = PALETTE[mi % len(PALETTE)]
        ax.scatter(*xy["off"], s=24, color=color, alpha=0.3, linewidths=0,
                   label=tex(f"{m}: other runs") if xy["off"][0] else "_nolegend_")
        ax.step(*xy["on"], where="post", color=color, lw=2)
        ax.scatter(*xy["on"], s=55, color=color, edgecolors="black", linewidths=1, zorder=3,
                   label=tex(f"{m}: front"))
    ax.set_xscale("log")
    ticks = size_axis(runs)
    ax.xaxis.set_major_locator(FixedLocator(ticks["tickvals"]))
    ax.xaxis.set_major_formatter(FixedFormatter(ticks["ticktext"]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    ax.set(xlabel=label(SIZE), ylabel=label(ACC), title=tex(title))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _fmt(r: RunRecord, m: str) -> str:
    from lilnetx.metrics import format_metric, format_size

    if m == SIZE:
        return format_size(r.metrics.get(SIZE), r.metrics.get("dense_bytes"))
    return format_metric(m, r.metrics.get(m))


def _params(r: RunRecord, keys: list[str]) -> str:
    from explorer.cli import SHORT_PARAMS
    from lilnetx.metrics import format_param

    return " ".join(f"{SHORT_PARAMS.get(k, k)}={format_param(r.params[k])}"
                    for k in keys if k in r.params)


def _param_keys(runs: list[RunRecord]) -> list[str]:
    """The hyperparameters that vary among ``runs`` (those searched), else the usual ones."""
    from explorer.cli import SHORT_PARAMS

    keys = sorted({k for r in runs for k in r.params})
    vary = [k for k in keys if len({str(r.params.get(k)) for r in runs}) > 1]
    return vary or [k for k in keys if k in SHORT_PARAMS]


def render_html(exp_name: str, sweep: str, runs: list[RunRecord], done: list[RunRecord],
                front: dict[str, list[RunRecord]], objectives: dict[str, str],
                registered: dict[str, list[str]], figures_html: list[str], png_name: str,
                now: datetime) -> str:
    """The page (see the module docstring). ``figures_html``: the main figure with plotly.js
    inline, then the others without it."""
    from explorer.cli import run_label
    from lilnetx.metrics import METRICS, searched_metric

    esc = html.escape

    def name(m: str) -> str:
        return esc(METRICS.get(m).label if m in METRICS else m)

    def lab(r: RunRecord) -> str:
        return esc(run_label(r.name, sweep)) + "".join(
            f' <span class="reg">registered as {esc(v)}</span>'
            for v in registered.get(r.run_id, []))

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")

    states = [r.status for r in runs]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states)))
    objs = ", ".join(f"{name(o)} ({esc(d)}" + (f", selected on {name(searched_metric(o))}"
                                               if searched_metric(o) != o else "") + ")"
                     for o, d in objectives.items())
    when = (f"{day(min(r.start_time for r in runs))} to "
            f"{day(max(r.end_time or r.start_time for r in runs))}")
    regs = "; ".join(f"{esc(v)} (run {esc(run_label(r.name, sweep))})" for r in runs
                     for v in registered.get(r.run_id, [])) or "none"
    select = selection_metric(done)
    budgets = size_budgets([r.metrics[SIZE] for r in done])
    best = best_per_budget(done, budgets, select)
    rows = []
    for bi, b in enumerate(budgets):
        cells = "".join(
            f'<td data-method="{esc(m)}" data-run="{esc(r.run_id if r else "")}">'
            + ("-" if r is None else f"<b>{_fmt(r, ACC)}</b><br><small>{lab(r)}, "
               f"{esc(_fmt(r, SIZE))}</small>") + "</td>" for m, r in
            ((m, v[bi]) for m, v in best.items()))
        rows.append(f'<tr data-budget="{b:g}"><td class="l">&le; {short_bytes(b)}</td>{cells}'
                    "</tr>")
    sel_note = ("selected on validation accuracy, reported on the test set: no choice on "
                "this page is made on the test set" if select == VAL else "selected on test "
                "accuracy (these runs have no validation accuracy): optimistic values")
    cols = [VAL, ACC, SIZE, "latency_ms", "flops", "slice_sparsity"]
    ths = "".join(f"<th>{name(c)}</th>" for c in cols)
    chosen = []
    for m, rs in front.items():
        keys = _param_keys([r for r in done if r.method == m])
        trs = "".join(f'<tr data-run="{esc(r.run_id)}"><td class="l">{lab(r)}</td>'
                      + "".join(f"<td>{esc(_fmt(r, c))}</td>" for c in cols)
                      + f'<td class="l">{esc(_params(r, keys))}</td></tr>' for r in rs)
        chosen.append(f'<h3>{esc(m)}: {len(rs)} run{"s" * (len(rs) != 1)} on the front</h3>'
                      f'<table class="front" data-method="{esc(m)}"><tr><th class="l">run</th>'
                      f'{ths}<th class="l">hyperparameters</th></tr>{trs}</table>')
    title = f"LilNetX report: {esc(exp_name)}, sweep {esc(sweep)}"
    extra = "".join(f"<h2>Hypervolume by finished trial</h2>{f}" for f in figures_html[1:])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><h1>{title}</h1><dl>
<dt>experiment</dt><dd>{esc(exp_name)}</dd><dt>sweep</dt><dd>{esc(sweep)}</dd>
<dt>runs</dt><dd>{when}</dd><dt>trials</dt><dd>{len(runs)}: {esc(counts)}</dd>
<dt>objectives</dt><dd>{objs or "-"}</dd><dt>registered models</dt><dd>{regs}</dd>
<dt>generated</dt><dd>{now.strftime("%Y-%m-%d %H:%M UTC")} by <code>lilnetx report</code>
(the figure is also in {esc(png_name)} beside this file)</dd></dl>
<h2>Test accuracy against file size</h2>{figures_html[0]}
<p class="note">Log size axis. Step lines: each method's front of the plotted values (test
accuracy); faded points: the other finished runs. The chosen runs below are the fronts the
sweep searched (validation accuracy), so they may differ slightly.</p>
<h2>Best accuracy per size budget</h2><table class="budgets"><tr><th class="l">file size</th>
{"".join(f"<th>{esc(m)}</th>" for m in best)}</tr>{"".join(rows)}</table>
<p class="note">Per method, among the finished runs whose file fits the budget: the run
{sel_note}.</p>
<h2>The chosen runs</h2>{"".join(chosen)}{extra}</body></html>
"""


def check_out(out: str) -> tuple[Path, Path]:
    """(HTML path, PNG path beside it): ``out`` must end in .html in an existing folder."""
    p = Path(out)
    if p.is_dir():
        raise ConfigError(f"--out {out!r} is a directory; give a file name such as report.html")
    if p.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out must end in .html, but got {out!r}")
    if not p.parent.is_dir():
        raise ConfigError(f"--out {out!r}: folder {str(p.parent)!r} does not exist")
    png = p.with_suffix(".png")
    if png.is_dir():
        raise ConfigError(f"{str(png)!r} (the PNG beside --out) is a directory")
    return p, png


def build_report(uri: str, experiment: str | None, sweep: str | None, out: str, *,
                 now: datetime | None = None) -> dict:
    """Write the HTML page and the PNG; returns ``{"html", "png", "runs", "fronts", ...}``."""
    from explorer.sweep import fronts
    from lilnetx.metrics import searched_metric

    from .data import load_experiment
    from .figures import front_indices, hypervolume_figure

    html_path, png_path = check_out(out)
    exp_name, sweep = locate(uri, experiment, sweep)
    exp = load_experiment(uri, exp_name, full=True)
    runs = [r for r in exp.runs if r.sweep == sweep]
    done = usable(runs)
    if not done:
        raise ConfigError(f"sweep {sweep!r} of experiment {exp_name!r} has no finished run "
                          f"with {ACC} and {SIZE} yet ({len(runs)} trial runs)")
    objectives = exp.objectives.get(sweep) or {ACC: "max", SIZE: "min"}
    res = fronts(uri, exp.experiment_id, sweep, objectives)
    by_id = {r.run_id: r for r in runs}
    front = {}
    for m in sorted({r.method for r in done}):
        rows = res["methods"].get(m, {}).get("front", [])
        rs = [by_id[row["run_id"]] for row in rows if row["run_id"] in by_id]
        if not rs:  # no run with the searched metrics (no val_accuracy): the plotted front
            group = [r for r in done if r.method == m]
            rs = [group[i] for i in front_indices(group, (SIZE, ACC))]
        front[m] = sorted(rs, key=lambda r: r.metrics.get(SIZE, math.inf))
    registered = registered_versions(uri, [r.run_id for r in runs])
    searched = {searched_metric(o): d for o, d in objectives.items()}
    figs = [main_figure(done), hypervolume_figure(done, searched)]
    config = {"displaylogo": False, "responsive": True}
    parts = [f.to_html(full_html=False, include_plotlyjs=i == 0, config=config,
                       div_id=("fig-pareto", "fig-hypervolume")[i]) for i, f in enumerate(figs)]
    write_png(done, png_path, f"{exp_name}, sweep {sweep}")
    html_path.write_text(render_html(exp_name, sweep, runs, done, front, objectives, registered,
                                     parts, png_path.name, now or datetime.now(UTC)),
                         encoding="utf-8")
    select = selection_metric(done)
    budgets = size_budgets([r.metrics[SIZE] for r in done])
    best = best_per_budget(done, budgets, select)
    return {"html": str(html_path), "png": str(png_path), "runs": len(runs),
            "finished": len([r for r in runs if r.status == "FINISHED"]),
            "failed": len([r for r in runs if r.status == "FAILED"]), "experiment": exp_name,
            "sweep": sweep, "objectives": objectives, "selected_on": select,
            "fronts": {m: [{"run_id": r.run_id, "run_name": r.name,
                            **{k: r.metrics.get(k) for k in (VAL, ACC, SIZE)}} for r in rs]
                       for m, rs in front.items()},
            "budgets": [{"budget": b, "best": {m: v[i] and v[i].run_id for m, v in best.items()}}
                        for i, b in enumerate(budgets)], "registered": registered}
