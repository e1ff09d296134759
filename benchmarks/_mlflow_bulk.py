"""Write many synthetic runs into a real MLflow sqlite tracking store, fast.

Logging runs one by one through ``MlflowClient`` (``create_run``, ``log_batch``,
``set_terminated``) costs ~130 ms a run on this machine: every call opens a session, reads the run
back, checks it is active and commits. :func:`bulk_log_runs` writes the same rows straight into
the store's tables, using MLflow's own SQLAlchemy models (``mlflow.store.tracking.dbmodels``) for
the table and column definitions, with one engine, one Core ``INSERT`` executemany per table and
one commit per chunk of runs.

The rows are the ones ``SqlAlchemyStore`` itself writes for a run created by
``MlflowClient.create_run`` and filled by ``log_batch`` and ``set_terminated`` (mlflow 3.17):

- ``runs``: ``run_uuid`` = ``uuid4().hex``; ``name`` = the run name; ``source_type`` ``UNKNOWN``,
  ``source_name``, ``entry_point_name`` and ``source_version`` empty strings; ``user_id`` = the
  ``mlflow.user`` tag or ``"unknown"`` (what the client passes); ``lifecycle_stage`` ``active``;
  ``deleted_time`` NULL; ``artifact_uri`` = ``<experiment artifact_location>/<run id>/artifacts``
  (``append_to_uri_path``, as ``create_run`` builds it);
- ``tags``: the given tags plus ``mlflow.runName`` (unless already given; a different value is an
  error, as in ``create_run``);
- ``params``: one row per key (values are strings);
- ``metrics``: every distinct ``(key, timestamp, step, value, is_nan)`` (the primary key; the store
  drops exact duplicates the same way); NaN is stored as ``value=0, is_nan=1`` and +/-inf as
  +/-max float, as ``SqlAlchemyStore.sanitize_metric_value`` does;
- ``latest_metrics``: per key, the entry with the highest ``(step, timestamp, sanitised value)``,
  the first such one on ties (the store only replaces its latest entry by a strictly greater one).
  ``get_run``'s metrics and ``search_runs``' ``metrics.*`` filters and ordering read this table,
  not ``metrics``.

Nothing else is touched by a run logged this way (checked by dumping every table before and after
logging one run through the client): no ``experiments.last_update_time`` update, no ``inputs`` or
logged-model rows (those only come with datasets or models).

Keys and values are checked like the client checks them (names, lengths; over-long param and tag
values are truncated when ``MLFLOW_TRUNCATE_LONG_VALUES`` says so), once per distinct key.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from collections.abc import Iterable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import sqlalchemy
from mlflow.entities import LifecycleStage, RunStatus, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlExperiment,
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    _validate_length_limit,
    _validate_metric_name,
    _validate_param_name,
    _validate_tag_name,
)

__all__ = ["CHUNK_RUNS", "bulk_log_runs"]

CHUNK_RUNS = 1000
"""Runs written per transaction."""

ARTIFACTS_FOLDER_NAME = "artifacts"
"""The last part of a run's ``artifact_uri`` (``SqlAlchemyStore.ARTIFACTS_FOLDER_NAME``)."""

_MAX_FLOAT = 1.7976931348623157e308
_STATUSES = frozenset(RunStatus.to_string(s) for s in RunStatus.all_status())
_SOURCE_TYPE = SourceType.to_string(SourceType.UNKNOWN)


def _sanitize(value: float) -> tuple[bool, float]:
    """``(is_nan, stored value)`` of a metric value, as ``SqlAlchemyStore.sanitize_metric_value``."""
    if math.isnan(value):
        return True, 0
    if math.isinf(value):
        return False, _MAX_FLOAT if value > 0 else -_MAX_FLOAT
    return False, value


class _KeyChecker:
    """Validates each distinct metric, param and tag name once, as the client would."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {"metric": set(), "param": set(), "tag": set()}

    def __call__(self, kind: str, key: str) -> None:
        seen = self._seen[kind]
        if key in seen:
            return
        {"metric": _validate_metric_name, "param": _validate_param_name,
         "tag": _validate_tag_name}[kind](key)
        _validate_length_limit(f"{kind.capitalize()} name", MAX_ENTITY_KEY_LENGTH, key)
        seen.add(key)


def _check_metric(key: str, value, timestamp, step) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise MlflowException.invalid_parameter_value(
            f"Metric {key!r}: value {value!r} is not a number")
    if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Number) or timestamp < 0:
        raise MlflowException.invalid_parameter_value(
            f"Metric {key!r}: timestamp {timestamp!r} is not a nonnegative integer")
    if isinstance(step, bool) or not isinstance(step, numbers.Number):
        raise MlflowException.invalid_parameter_value(
            f"Metric {key!r}: step {step!r} is not an integer")


def _experiment_artifact_location(conn, experiment_id: int) -> str:
    row = conn.execute(
        sqlalchemy.select(SqlExperiment.artifact_location, SqlExperiment.lifecycle_stage)
        .where(SqlExperiment.experiment_id == experiment_id)
    ).one_or_none()
    if row is None:
        raise MlflowException(f"No experiment with id {experiment_id} in the store",
                              error_code="RESOURCE_DOES_NOT_EXIST")
    if row.lifecycle_stage != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The experiment {experiment_id} must be in the 'active' state. "
            f"Current state is {row.lifecycle_stage}.", error_code="INVALID_PARAMETER_VALUE")
    return row.artifact_location


def _rows(run: dict, run_id: str, experiment_id: int, artifact_location: str, check: _KeyChecker,
          out: dict[str, list[dict]]) -> None:
    """Append the rows of one run to ``out`` (table name -> list of row dicts)."""
    tags = {str(k): "" if v is None else str(v) for k, v in (run.get("tags") or {}).items()}
    run_name = run.get("run_name")
    run_name_tag = tags.get(MLFLOW_RUN_NAME)
    if run_name and run_name_tag and run_name != run_name_tag:
        raise MlflowException.invalid_parameter_value(
            "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
            f"different values (run_name='{run_name}', mlflow.runName='{run_name_tag}').")
    run_name = run_name or run_name_tag or _generate_random_name()
    if not run_name_tag:
        tags[MLFLOW_RUN_NAME] = run_name
    status = run.get("status") or RunStatus.to_string(RunStatus.FINISHED)
    if status not in _STATUSES:
        raise MlflowException.invalid_parameter_value(
            f"Run status {status!r} is not one of {sorted(_STATUSES)}")

    out["runs"].append({
        "run_uuid": run_id,
        "name": run_name,
        "source_type": _SOURCE_TYPE,
        "source_name": "",
        "entry_point_name": "",
        "user_id": tags.get(MLFLOW_USER, "unknown"),
        "status": status,
        "start_time": run.get("start_time") or get_current_time_millis(),
        "end_time": run.get("end_time"),
        "deleted_time": None,
        "source_version": "",
        "lifecycle_stage": LifecycleStage.ACTIVE,
        "artifact_uri": append_to_uri_path(artifact_location, run_id, ARTIFACTS_FOLDER_NAME),
        "experiment_id": experiment_id,
    })

    rows = out["tags"]
    for key, value in tags.items():
        check("tag", key)
        value = _validate_length_limit(f"Tag {key!r} value", MAX_TAG_VAL_LENGTH, value,
                                       truncate=True)
        rows.append({"key": key, "value": value, "run_uuid": run_id})

    rows = out["params"]
    for key, value in (run.get("params") or {}).items():
        key = str(key)
        check("param", key)
        value = _validate_length_limit(f"Param {key!r} value", MAX_PARAM_VAL_LENGTH, str(value),
                                       truncate=True)
        rows.append({"key": key, "value": value, "run_uuid": run_id})

    metric_rows, latest_rows = out["metrics"], out["latest_metrics"]
    for key, entries in (run.get("metrics") or {}).items():
        check("metric", key)
        seen: set[tuple] = set()
        latest = None
        for value, timestamp, step in entries:
            _check_metric(key, value, timestamp, step)
            is_nan, stored = _sanitize(float(value))
            timestamp, step = int(timestamp), int(step)
            ident = (timestamp, step, stored, is_nan)
            if ident in seen:
                continue
            seen.add(ident)
            row = {"key": key, "value": stored, "timestamp": timestamp, "step": step,
                   "is_nan": is_nan, "run_uuid": run_id}
            metric_rows.append(row)
            if latest is None or (step, timestamp, stored) > (
                    latest["step"], latest["timestamp"], latest["value"]):
                latest = row
        if latest is not None:
            latest_rows.append(latest)


_TABLES = {model.__tablename__: model.__table__
           for model in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)}
"""Insert order: ``runs`` first (the other tables' ``run_uuid`` references it)."""


def bulk_log_runs(uri: str, experiment_id: str, runs: Iterable[dict],
                  chunk_runs: int = CHUNK_RUNS) -> list[str]:
    """Insert runs; each dict: run_name (str), start_time and end_time (int ms; end_time may be None
    for RUNNING), status ('FINISHED'|'FAILED'|'RUNNING'|'KILLED'), tags (dict str->str), params
    (dict str->str), metrics (dict key -> list of (value: float, timestamp_ms: int, step: int))).
    Returns the new run ids (32 hex).

    The store must already exist (create it and the experiment with MlflowClient first). The runs
    read back through ``MlflowClient.get_run`` / ``search_runs`` / ``get_metric_history`` exactly
    as if logged through the client (``create_run`` with the tags and run name, ``log_batch`` with
    the params and metrics in the given order, ``set_terminated`` with the status and end time):
    run_name also as the ``mlflow.runName`` tag, latest metrics = the value at the highest step
    (then timestamp, then value), artifact_uri under the experiment's artifact location,
    lifecycle_stage ``active``, user id from the ``mlflow.user`` tag (else ``"unknown"``).

    Missing keys default like the client: no run_name -> a random name, no start_time -> now,
    no status -> FINISHED; end_time is stored as given (None stays None). Each chunk of
    ``chunk_runs`` runs is one transaction: an error leaves the earlier chunks written.
    """
    experiment = int(experiment_id)
    engine = sqlalchemy.create_engine(uri)
    run_ids: list[str] = []
    check = _KeyChecker()
    chunk: dict[str, list[dict]] = {name: [] for name in _TABLES}

    def flush() -> None:
        with engine.begin() as conn:
            for name, table in _TABLES.items():
                if chunk[name]:
                    conn.execute(table.insert(), chunk[name])
                    chunk[name] = []

    try:
        with engine.connect() as conn:
            artifact_location = _experiment_artifact_location(conn, experiment)
        pending = 0
        for run in runs:
            run_id = uuid.uuid4().hex
            _rows(run, run_id, experiment, artifact_location, check, chunk)
            run_ids.append(run_id)
            pending += 1
            if pending >= chunk_runs:
                flush()
                pending = 0
        if pending:
            flush()
    finally:
        engine.dispose()
    return run_ids
