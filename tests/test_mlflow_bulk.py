"""``benchmarks/_mlflow_bulk.bulk_log_runs`` writes runs that read back like client-logged ones.

One run is logged through ``MlflowClient`` (``create_run``, ``log_batch``, ``set_terminated``) and
the same content through ``bulk_log_runs`` into the same real sqlite store; ``get_run``,
``get_metric_history`` and ``search_runs`` must not tell them apart.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _mlflow_bulk import bulk_log_runs  # noqa: E402

T0 = 1_700_000_000_000

TRIAL = {
    "run_name": "trial-7",
    "start_time": T0,
    "end_time": T0 + 360_000,
    "status": "FINISHED",
    "tags": {"lilnetx.role": "trial", "lilnetx.method": "lilnetx", "lilnetx.trial": "7",
             "mlflow.user": "alice"},
    "params": {"lr": "0.01", "lambda_rate": "0.0001", "epochs": "3"},
    "metrics": {
        # the latest value is the one at the highest step, not the largest nor the last logged
        "accuracy": [(0.62, T0 + 1, 0), (0.79, T0 + 3, 2), (0.81, T0 + 2, 1)],
        "loss": [(1.0, T0 + 1, 2), (2.0, T0 + 2, 0), (1.5, T0 + 9, 1)],
        # same step: the higher timestamp wins, then the higher value
        "tie_timestamp": [(0.3, T0 + 5, 1), (0.7, T0 + 4, 1)],
        "tie_value": [(0.4, T0, 1), (0.2, T0, 1)],
        "size_bits": [(12345.0, T0 + 10, 0)],
        "diverged": [(float("nan"), T0 + 10, 0)],
        "overflow": [(float("inf"), T0 + 10, 0), (float("-inf"), T0 + 11, 1)],
        "duplicate": [(1.0, T0, 0), (1.0, T0, 0), (2.0, T0, 0)],
    },
}

FILTERS = [
    "attributes.status = 'FINISHED'",
    f"attributes.end_time > {T0}",
    "attributes.run_name = 'trial-7'",
    "tags.`lilnetx.role` = 'trial'",
    "metrics.accuracy > 0.5",
    "params.lr = '0.01'",
]


def _value(v: float):
    return "nan" if math.isnan(v) else v


def _metrics(metrics: dict[str, float]) -> dict:
    return {k: _value(v) for k, v in metrics.items()}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple]:
    return [(m.key, _value(m.value), m.timestamp, m.step)
            for m in client.get_metric_history(run_id, key)]


def _log_through_client(client: MlflowClient, experiment_id: str, run: dict) -> str:
    created = client.create_run(experiment_id, start_time=run["start_time"], tags=run["tags"],
                                run_name=run["run_name"])
    run_id = created.info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, timestamp, step) for key, entries in run["metrics"].items()
                 for value, timestamp, step in entries],
        params=[Param(key, value) for key, value in run["params"].items()])
    client.set_terminated(run_id, status=run["status"], end_time=run["end_time"])
    return run_id


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("bulk", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, experiment_id


def test_bulk_runs_read_back_like_client_runs(store):
    uri, client, experiment_id = store
    logged = _log_through_client(client, experiment_id, TRIAL)
    other = {  # must match none of FILTERS
        "start_time": T0 + 5, "end_time": None, "status": "RUNNING",
        "tags": {"lilnetx.role": "sweep", "mlflow.runName": "sweep-1"},
        "params": {"lr": "0.1"}, "metrics": {"accuracy": [(0.4, T0, 0)]},
    }
    bulk, running = bulk_log_runs(uri, experiment_id, [TRIAL, other])
    assert len(bulk) == 32 and int(bulk, 16) >= 0 and bulk != logged

    want, got = client.get_run(logged), client.get_run(bulk)
    want_info, got_info = dict(want.info), dict(got.info)
    assert (want_info.pop("run_id"), got_info.pop("run_id")) == (logged, bulk)
    assert got_info.pop("artifact_uri") == want_info.pop("artifact_uri").replace(logged, bulk)
    location = client.get_experiment(experiment_id).artifact_location
    assert got.info.artifact_uri == f"{location}/{bulk}/artifacts"
    assert got_info == want_info
    assert got.info.user_id == "alice" and got.info.lifecycle_stage == "active"

    assert _metrics(got.data.metrics) == _metrics(want.data.metrics)
    assert got.data.metrics["accuracy"] == 0.79 and got.data.metrics["loss"] == 1.0
    assert got.data.metrics["tie_timestamp"] == 0.3 and got.data.metrics["tie_value"] == 0.4
    assert got.data.params == want.data.params == TRIAL["params"]
    tags_want = {k: v for k, v in want.data.tags.items() if logged not in v}
    tags_got = {k: v for k, v in got.data.tags.items() if bulk not in v}
    assert tags_got == tags_want
    assert tags_got["mlflow.runName"] == "trial-7"

    for key in TRIAL["metrics"]:
        assert _history(client, bulk, key) == _history(client, logged, key), key

    for filter_string in FILTERS:
        found = {r.info.run_id for r in client.search_runs([experiment_id], filter_string)}
        assert found == {logged, bulk}, filter_string
    ordered = client.search_runs([experiment_id], order_by=["metrics.accuracy DESC"])
    assert [r.info.run_id for r in ordered][-1] == running

    run = client.get_run(running)
    assert (run.info.status, run.info.end_time, run.info.run_name) == ("RUNNING", None, "sweep-1")
    assert run.info.user_id == "unknown" and run.data.metrics == {"accuracy": 0.4}


def test_bulk_rejects_what_the_client_rejects(store):
    uri, client, experiment_id = store
    with pytest.raises(MlflowException, match="different values"):
        bulk_log_runs(uri, experiment_id, [{"run_name": "a", "tags": {"mlflow.runName": "b"}}])
    with pytest.raises(MlflowException):
        bulk_log_runs(uri, experiment_id, [{"run_name": "a", "params": {"../x": "1"}}])
    with pytest.raises(MlflowException):
        bulk_log_runs(uri, experiment_id, [{"run_name": "a", "status": "DONE"}])
    assert client.search_runs([experiment_id]) == []
