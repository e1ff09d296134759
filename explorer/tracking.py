"""MLflow tracking for sweeps: where runs go, the sweep's parent run, and each trial's child run.

Default store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` with artifacts
under ``<cwd>/mlartifacts``. The database and the experiment are created once, in the driver,
before any trial starts (concurrent first opens of a fresh sqlite file break MLflow's migration).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from lilnetx.errors import ConfigError

TAG_METHOD = "lilnetx.method"
TAG_SWEEP = "lilnetx.sweep"
TAG_ROLE = "lilnetx.role"
TAG_TRIAL = "lilnetx.trial"
TAG_OBJECTIVES = "lilnetx.objectives"
TAG_ERROR = "lilnetx.error"
TAG_PARENT = "mlflow.parentRunId"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store in the cwd."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """Absolute artifact location for local stores (trials run in other working directories);
    ``None`` for a server, which proxies artifacts itself."""
    if is_server(uri) or uri.startswith("databricks"):
        return None
    if uri.startswith("sqlite:///"):
        base = Path(uri[len("sqlite:///"):]).resolve().parent
    else:
        base = Path.cwd()
    return (base / "mlartifacts" / experiment).resolve().as_uri()


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Raise :class:`ConfigError` within ``timeout`` s if a tracking server does not answer."""
    if not is_server(uri):
        return
    from urllib.parse import urlparse
    from urllib.request import urlopen

    parsed = urlparse(uri)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
        with urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            r.read()
    except OSError as e:
        raise ConfigError(f"tracking server {uri} is unreachable: {e}") from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (``None`` for other stores)."""
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        return Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return None


def check_store(uri: str) -> None:
    """For commands that only read (pareto, export, dashboard): the store must exist. A missing
    sqlite file raises :class:`ConfigError` instead of MLflow creating an empty database (and
    its folders) at a mistyped path; a server must answer."""
    check_server(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no tracking database at {str(db)[:200]}: run `lilnetx sweep` first, "
                          "or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to an existing "
                          "store")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with an absolute artifact location) if missing."""
    if not name or len(name) > 200:
        raise ConfigError(f"experiment name must be 1-200 characters, but got {name!r}")
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"experiment {name!r} is deleted; restore it or choose another name")
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=default_artifact_location(uri, name))


def find_parent(uri: str, experiment_id: str, space_name: str):
    """The newest sweep parent run of ``space_name`` in the experiment, or ``None``."""
    runs = client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'sweep' and tags.`lilnetx.space` = '{space_name}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def child_runs(uri: str, experiment_id: str, sweep: str | None = None, status: str | None = None):
    """Trial runs of the experiment (of one sweep when ``sweep`` is given)."""
    filt = f"tags.`{TAG_ROLE}` = 'trial'"
    if sweep:
        filt += f" and tags.`{TAG_SWEEP}` = '{sweep}'"
    if status:
        filt += f" and attributes.status = '{status}'"
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client(uri).search_runs([experiment_id], filter_string=filt,
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                       page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


EPOCH_KEYS = {"val_accuracy": "epoch_val_accuracy", "bits_estimate": "epoch_bits_estimate"}
"""Per-epoch training metrics logged under another name than the run's final metric of the
same meaning: MLflow's latest value of a key is the one of the highest step, so an epoch's
``val_accuracy`` (before IMP prunes the last time, before quant quantizes) would otherwise
hide the accuracy of the stored network, logged at step 0."""


def log_metrics(uri: str, run_id: str, metrics: dict, step: int = 0) -> None:
    """Log numeric, finite metrics in one batch call."""
    import math

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


def log_params(uri: str, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    client(uri).log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
