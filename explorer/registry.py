"""Export a sweep run's model to the MLflow model registry as a pyfunc whose artifact is the
run's ``.lnx`` file, with an alias and version tags."""

from __future__ import annotations

import os
import re
import tempfile

from lilnetx.errors import ConfigError

from . import tracking

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")


def check_name(name: str, what: str = "model name") -> str:
    """Registry names: letters, digits, ``_ . -``, at most 100 characters, no path parts."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"invalid {what} {name!r}: use 1-100 letters, digits, '_', '.', '-', "
                          "starting with a letter or digit")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or re.match(r"^v\d+$", alias):
        raise ConfigError(f"invalid alias {alias!r}: use letters, digits, '_', '-', starting "
                          "with a letter (and not of the form v<number>)")
    return alias


def export_run(run_id: str, name: str, alias: str = "champion",
               tracking_uri: str | None = None) -> dict:
    """Register ``run_id``'s ``model.lnx`` as pyfunc model ``name`` and point ``alias`` at it.

    Returns ``{"name", "version", "alias", "uri", "run_id", "lnx_artifact", "tags"}``.
    """
    import mlflow

    check_name(name)
    check_alias(alias)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_store(uri)
    c = tracking.client(uri)
    try:
        run = c.get_run(run_id)
    except Exception:
        raise ConfigError(f"unknown run id {run_id!r} at {uri}") from None
    if "model.lnx" not in {a.path for a in c.list_artifacts(run_id)}:
        raise ConfigError(f"run {run_id} has no model.lnx artifact to export")
    mlflow.set_tracking_uri(uri)
    code = os.path.join(os.path.dirname(__file__), "lnx_pyfunc.py")
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(run_id, "model.lnx", tmp)
        import lilnetx

        lilnetx.load(local)  # refuse to register a file that does not decode
        status = run.info.status
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="registered_model", python_model=code,
                                           artifacts={"model": local})
        if status != "RUNNING":
            c.set_terminated(run_id, status)
    mv = mlflow.register_model(info.model_uri, name)
    metrics = run.data.metrics
    tags = {k: str(metrics[k]) for k in ("accuracy", "size_bytes", "latency_ms") if k in metrics}
    tags["source_run"] = run_id
    for k, v in tags.items():
        c.set_model_version_tag(name, mv.version, k, v)
    c.set_registered_model_alias(name, alias, mv.version)
    return {"name": name, "version": str(mv.version), "alias": alias,
            "uri": f"models:/{name}@{alias}", "run_id": run_id,
            "lnx_artifact": f"runs:/{run_id}/model.lnx", "tags": tags}
