"""Parameter importance (fANOVA through optuna.importance) on runs whose objectives each depend
on one known hyperparameter."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("optuna")
pytest.importorskip("plotly")

from dashboards.importance import (  # noqa: E402
    ImportanceCache,
    importance_figure,
    importances,
)
from explorer.runs import RunRecord  # noqa: E402

OBJ = {"accuracy": "max", "size_bytes": "min"}


def runs(n=40, seed=0, method="lilnetx"):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lam = 10 ** rng.uniform(-4, 1)
        lr = rng.choice([0.01, 0.05])
        noise = rng.uniform(0, 1e-3)
        out.append(RunRecord(
            run_id=f"{seed}{i:031x}", name=f"t{i}", status="FINISHED", sweep="s",
            method=method, trial=i, start_time=i,
            params={"lambda_rate": lam, "lr": lr, "epochs": 3, "model": "lenet5",
                    "opt": rng.choice(["adam", "sgd"])},
            # size moves with lambda_rate only; validation accuracy with lr only
            metrics={"val_accuracy": 0.9 - 2 * lr + noise, "size_bytes": 1e4 / (1 + 1e4 * lam)}))
    out.append(RunRecord(run_id="f" * 32, name="bad", status="FAILED", sweep="s",
                         method=method, trial=n, start_time=n, params={}, metrics={}))
    return out


def test_importance_finds_the_parameter_that_moves_each_objective():
    res = importances(runs(), OBJ)
    assert res["error"] == "" and res["runs"] == res["of"] == 40
    # constant parameters (epochs, model) are not searched: left out
    assert set(res["params"]) == {"lambda_rate", "lr", "opt"}
    size, acc = res["importances"]["size_bytes"], res["importances"]["accuracy"]
    assert max(size, key=size.get) == "lambda_rate" and size["lambda_rate"] > 0.8
    assert max(acc, key=acc.get) == "lr" and acc["lr"] > 0.8
    assert sum(size.values()) == pytest.approx(1.0)
    fig = importance_figure(res, "lilnetx")
    assert [t.name for t in fig.data] == ["test accuracy", "file size (bytes)"]
    assert list(fig.data[0].y) == res["params"] and fig.layout.xaxis.tickformat == ".0%"
    assert "40 runs" in fig.layout.title.text


def test_importance_sample_and_messages():
    res = importances(runs(60), OBJ, max_runs=20)
    assert res["runs"] == 20 and res["of"] == 60
    assert "20 of 60 runs" in importance_figure(res, "m").layout.title.text
    few = importances(runs(3), OBJ)
    assert "needs 5 finished runs, has 3" in few["error"]
    assert "needs 5" in importance_figure(few, "m").layout.annotations[0].text
    assert "computing" in importance_figure(None, "m").layout.annotations[0].text


def test_importance_cache_computes_once_until_the_runs_grow():
    cache = ImportanceCache()
    rs = runs(30)
    first = cache.get(rs, OBJ, "lilnetx", wait=True)
    assert first is not None and first["runs"] == 30
    assert cache.get(rs, OBJ, "lilnetx", wait=True) is first  # nothing new: not recomputed
    more = rs + runs(10, seed=1)[:-1]
    again = cache.get(more, OBJ, "lilnetx", wait=True)
    assert again is not first and again["runs"] == 40
