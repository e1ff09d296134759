"""explorer.runs.RunCache on a real MLflow sqlite store: what an incremental refresh asks the
store for, and that it ends with the same runs as a full read."""

from __future__ import annotations

import json
import os
import time

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("mlflow")

from explorer import runs as runs_mod  # noqa: E402
from explorer import tracking  # noqa: E402


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment(uri, "cache")
    return uri, exp_id


def new_parent(uri, exp_id, sweep):
    c = tracking.client(uri)
    p = c.create_run(exp_id, run_name=sweep, tags={
        tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: sweep,
        tracking.TAG_OBJECTIVES: json.dumps({"accuracy": "max", "size_bytes": "min"})})
    c.set_terminated(p.info.run_id, "FINISHED")


def new_trial(uri, exp_id, sweep, i, *, finish=True, end_time=None):
    c = tracking.client(uri)
    r = c.create_run(exp_id, run_name=f"t{i}", tags={
        tracking.TAG_ROLE: "trial", tracking.TAG_SWEEP: sweep, tracking.TAG_TRIAL: str(i),
        tracking.TAG_METHOD: "lilnetx"})
    tracking.log_params(uri, r.info.run_id, {"lambda_rate": 10.0 ** -i, "lr": 0.01})
    if finish:
        tracking.log_metrics(uri, r.info.run_id, {"accuracy": 0.9 - 0.01 * i,
                                                  "val_accuracy": 0.9 - 0.01 * i,
                                                  "size_bytes": 1000 - 10 * i})
        c.set_terminated(r.info.run_id, "FINISHED", end_time=end_time)
    return r.info.run_id


class Spy:
    """Counts MlflowClient.search_runs calls (the real method runs)."""

    def __init__(self, monkeypatch):
        from mlflow.tracking import MlflowClient

        self.calls = []
        real = MlflowClient.search_runs

        def search_runs(client, *a, **kw):
            self.calls.append(kw.get("filter_string", a[1] if len(a) > 1 else ""))
            return real(client, *a, **kw)

        monkeypatch.setattr(MlflowClient, "search_runs", search_runs)


def same_as_full(cache):
    fresh = runs_mod.RunCache(cache.uri, cache.experiment_id)
    fresh.reload()
    strip = lambda rs: [(r.run_id, r.status, r.metrics, r.params, r.end_time)  # noqa: E731
                        for r in rs]
    assert strip(cache.records()) == strip(fresh.records())
    assert cache.objectives == fresh.objectives


def test_incremental_refresh(store, monkeypatch):
    uri, exp_id = store
    new_parent(uri, exp_id, "s1")
    done = [new_trial(uri, exp_id, "s1", i) for i in range(4)]
    running = new_trial(uri, exp_id, "s1", 4, finish=False)
    cache = runs_mod.RunCache(uri, exp_id)
    first = cache.refresh()
    assert first.full and len(cache.runs) == 5 and cache.sweeps == ["s1"]
    assert cache.runs[running].status == "RUNNING"
    v = cache.version
    spy = Spy(monkeypatch)

    # nothing new: two queries (running, ended since), nothing changed, version kept
    st = cache.refresh()
    assert (st.queries, st.changed, st.full) == (2, 0, False) and cache.version == v
    assert len(spy.calls) == 2 and all("lilnetx.role" not in f for f in spy.calls)

    # a running run logs a metric: seen through the RUNNING query
    tracking.log_metrics(uri, running, {"train_loss": 0.5})
    st = cache.refresh()
    assert st.changed == 1 and cache.version == v + 1
    assert cache.runs[running].metrics["train_loss"] == 0.5

    # a run started and finished between two polls: seen through the end-time query
    quick = new_trial(uri, exp_id, "s1", 5)
    st = cache.refresh()
    assert st.changed == 1 and cache.runs[quick].status == "FINISHED" and st.queries == 2

    # the running run ends with an end time far in the past (a worker whose clock is behind):
    # found by id because it was running at the last poll
    tracking.log_metrics(uri, running, {"accuracy": 0.95, "size_bytes": 500})
    tracking.client(uri).set_terminated(running, "FINISHED", end_time=1000)
    st = cache.refresh()
    assert st.queries == 3 and cache.runs[running].status == "FINISHED"
    assert cache.runs[running].metrics["accuracy"] == 0.95

    # a new sweep: its parent is read once, for its objectives
    new_parent(uri, exp_id, "s2")
    new_trial(uri, exp_id, "s2", 0)
    st = cache.refresh()
    assert cache.sweeps == ["s1", "s2"] and st.queries == 3
    same_as_full(cache)

    # a running run that is deleted goes away at the next poll; a finished one at a reload
    gone = new_trial(uri, exp_id, "s2", 1, finish=False)
    cache.refresh()
    tracking.client(uri).delete_run(gone)
    tracking.client(uri).delete_run(done[0])
    cache.refresh()
    assert gone not in cache.runs and done[0] in cache.runs
    st = cache.reload()
    assert st.removed == 1 and done[0] not in cache.runs
    same_as_full(cache)


def test_finished_runs_are_not_read_again(store, monkeypatch):
    """The overlap of the "ended since" query leaves out the runs already read: right after a
    batch of runs, a poll with nothing new reads none of them again, on its first poll or a
    later one, while a run that ends inside the overlap is still found."""
    uri, exp_id = store
    new_parent(uri, exp_id, "s1")
    cache = runs_mod.RunCache(uri, exp_id)
    cache.refresh()
    batch = [new_trial(uri, exp_id, "s1", i) for i in range(6)]
    st = cache.refresh()
    assert st.changed == 6 and st.read == 6
    spy = Spy(monkeypatch)
    for _ in range(2):
        st = cache.refresh()
        assert (st.read, st.changed, st.queries) == (0, 0, 2)
    assert "NOT IN" in spy.calls[-1] and all(rid in spy.calls[-1] for rid in batch)
    late = new_trial(uri, exp_id, "s1", 7, end_time=cache._watermark - 1000)
    st = cache.refresh()
    assert st.read == 1 and late in cache.runs
    same_as_full(cache)


def test_full_reload_after_interval(store, monkeypatch):
    uri, exp_id = store
    new_parent(uri, exp_id, "s1")
    new_trial(uri, exp_id, "s1", 0)
    cache = runs_mod.RunCache(uri, exp_id)
    cache.refresh()
    monkeypatch.setattr(runs_mod, "FULL_RELOAD_S", 0.0)
    time.sleep(0.01)
    assert cache.refresh().full


def test_pareto_reads_through_the_cache(store):
    from explorer.sweep import fronts

    uri, exp_id = store
    new_parent(uri, exp_id, "s1")
    ids = [new_trial(uri, exp_id, "s1", i) for i in range(3)]
    new_trial(uri, exp_id, "s1", 3, finish=False)
    res = fronts(uri, exp_id, "s1", {"accuracy": "max", "size_bytes": "min"})
    # accuracy falls and size falls with i: every finished run is on the front
    assert {r["run_id"] for r in res["front"]} == set(ids)
    assert all(isinstance(r["params"]["lambda_rate"], float) for r in res["front"])
    assert runs_mod.cache_for(uri, exp_id).runs  # the process-wide cache was filled
