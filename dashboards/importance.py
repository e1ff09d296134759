"""Which hyperparameter moves which objective: fANOVA importances (``optuna.importance``) of the
searched hyperparameters, per objective, from the finished runs of one method.

The runs become trials of an in-memory Optuna study (``optuna.trial.create_trial`` with a
distribution per hyperparameter inferred from the values seen: log-uniform when they span two
decades, integer, or categorical), and Optuna's ``FanovaImportanceEvaluator`` (seeded) gives one
importance per hyperparameter and objective, summing to 1 per objective. fANOVA's random forest
takes about a second per objective on 50 runs and grows quickly, so at most :data:`MAX_RUNS`
runs are used (a seeded sample, said on the page), and :class:`ImportanceCache` computes in a
thread and recomputes only when the runs grew by :data:`GROWTH` or :data:`STALE_S` passed.
"""

from __future__ import annotations

import math
import random
import threading
import time

import plotly.graph_objects as go

from .data import RunRecord

MAX_RUNS = 300
MIN_RUNS = 5
GROWTH = 0.1
STALE_S = 60.0
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _distributions(runs: list[RunRecord]) -> dict:
    """Optuna distributions of the hyperparameters every run has and that take more than one
    value (booleans and strings categorical)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    common = set(runs[0].params)
    for r in runs[1:]:
        common &= set(r.params)
    out = {}
    for k in sorted(common):
        vals = [r.params[k] for r in runs]
        if len(set(map(str, vals))) < 2:
            continue
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
        if numeric and all(math.isfinite(v) for v in vals):
            lo, hi = min(vals), max(vals)
            if all(isinstance(v, int) for v in vals):
                out[k] = IntDistribution(int(lo), int(hi))
            else:
                out[k] = FloatDistribution(float(lo), float(hi),
                                           log=lo > 0 and hi / lo >= 100)
        else:
            out[k] = CategoricalDistribution(sorted({str(v) for v in vals}))
    return out


def importances(runs: list[RunRecord], objectives: dict[str, str], *,
                max_runs: int = MAX_RUNS, seed: int = 0) -> dict:
    """``{"importances": {objective: {param: share}}, "runs": used, "of": finished, "params":
    [...], "error": ""}`` for ``runs`` of one method (finished ones with every objective)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from explorer.pareto import search_metric

    metrics = {o: search_metric(o) for o in objectives}
    done = [r for r in runs if r.status == "FINISHED"
            and all(isinstance(r.metrics.get(m), int | float) and math.isfinite(r.metrics[m])
                    for m in metrics.values())]
    result = {"importances": {}, "runs": 0, "of": len(done), "params": [], "error": ""}
    if len(done) < MIN_RUNS:
        result["error"] = f"needs {MIN_RUNS} finished runs, has {len(done)}"
        return result
    if len(done) > max_runs:
        done = random.Random(seed).sample(sorted(done, key=lambda r: r.run_id), max_runs)
    dists = _distributions(done)
    if not dists:
        result["error"] = "no hyperparameter varies across these runs"
        return result
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if d == "max" else "minimize"
                                            for d in objectives.values()])
    study.add_trials([optuna.trial.create_trial(
        params={k: (str(r.params[k]) if isinstance(d, CategoricalDistribution)
                    else r.params[k]) for k, d in dists.items()},
        distributions=dists, values=[float(r.metrics[m]) for m in metrics.values()])
        for r in done])
    for i, o in enumerate(objectives):
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
            target=lambda t, i=i: t.values[i], normalize=True)
        result["importances"][o] = {k: float(v) for k, v in imp.items()}
    result["runs"], result["params"] = len(done), list(dists)
    return result


def importance_figure(result: dict, method: str) -> go.Figure:
    """Horizontal bars: one group per hyperparameter, one bar per objective."""
    from .figures import empty_figure, label

    if result is None:
        return empty_figure("computing parameter importance (fANOVA)...")
    if result.get("error"):
        return empty_figure(f"{method}: {result['error']}")
    fig = go.Figure()
    params = result["params"]
    for i, (o, imp) in enumerate(result["importances"].items()):
        fig.add_trace(go.Bar(
            y=params, x=[imp.get(p, 0.0) for p in params], orientation="h", name=label(o),
            marker_color=PALETTE[i % len(PALETTE)],
            hovertext=[f"{p} explains {imp.get(p, 0.0):.0%} of the variance of {label(o)}"
                       for p in params], hoverinfo="text"))
    sample = (f"{result['runs']} of {result['of']} runs (seeded sample)"
              if result["runs"] < result["of"] else f"{result['runs']} runs")
    fig.update_layout(barmode="group", template="plotly_white", height=120 + 50 * len(params),
                      xaxis={"title": "share of the objective's variance (fANOVA)",
                             "tickformat": ".0%", "range": [0, 1]},
                      title={"text": f"{method}: {sample}", "font": {"size": 13}},
                      margin={"l": 120, "r": 20, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.3}, uirevision="importance")
    return fig


class ImportanceCache:
    """Importances per (method, objectives), computed in a thread; :meth:`get` returns the last
    result (``None`` before the first) and starts a recomputation when the runs grew by
    :data:`GROWTH` or changed and :data:`STALE_S` passed."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict = {}

    def get(self, runs: list[RunRecord], objectives: dict[str, str], method: str,
            *, wait: bool = False):
        key = (method, tuple(objectives.items()))
        mine = [r for r in runs if r.method == method and r.status == "FINISHED"]
        sig = (len(mine), max((r.rev for r in mine), default=0))
        with self._lock:
            e = self._entries.setdefault(key, {"result": None, "sig": None, "at": 0.0,
                                               "thread": None})
            busy = e["thread"] is not None and e["thread"].is_alive()
            due = e["sig"] is None or (sig != e["sig"] and (
                sig[0] >= (e["sig"][0] or 1) * (1 + GROWTH)
                or time.monotonic() - e["at"] > STALE_S))
            if due and not busy:
                e["sig"], e["at"] = sig, time.monotonic()

                def work(rs=mine, entry=e):
                    try:
                        res = importances(rs, objectives)
                    except Exception as exc:  # shown in the panel, never a broken page
                        res = {"error": f"importance failed: {exc}"[:200]}
                    entry["result"] = res

                e["thread"] = threading.Thread(target=work, daemon=True,
                                               name="lilnetx-importance")
                e["thread"].start()
            thread = e["thread"]
        if wait and thread is not None:
            thread.join()
        return e["result"]
