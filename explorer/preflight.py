"""Checks a sweep makes before any trial starts, so a space that cannot work fails in seconds
with one message naming the field, instead of failing every trial (or waiting forever).

- the data: the dataset loads as each trial would load it (``dataset``, ``data_root``);
- the model: built on the ``meta`` device (no memory) at the largest width the space allows,
  a dummy batch of the dataset's shape pushed through, and its architecture checked against the
  ``.lnx`` parameter budget that ``lilnetx.load`` enforces (``model``, ``params.width``);
- ``params.val_fraction``: no validation split while an objective is searched on it;
- resources: ``search.cpus_per_trial`` / ``search.gpus_per_trial`` above what one node has;
- storage: the sqlite database's folder and the artifact location are writable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lilnetx.errors import ConfigError, LilNetXError

from .space import SearchSpace

_CUT = 160  # characters of a foreign message kept in ours


def _short(text: object) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= _CUT else s[:_CUT] + "..."


def _bounds(space: SearchSpace, method: str, key: str, default: Any) -> list[Any]:
    """The values of ``key`` a method's trials may take that matter for a check: the fixed
    value, or a distribution's bounds / choices."""
    spec = space.method_params(method).get(key, space.train.get(key, default))
    if isinstance(spec, dict):
        (kind, args), = spec.items()
        return list(args)
    return [spec]


def check_objectives(space: SearchSpace) -> None:
    """``val_fraction: 0`` leaves nothing to search ``accuracy`` / ``val_accuracy`` on."""
    if not {"accuracy", "val_accuracy"} & set(space.objectives):
        return
    for method in space.methods:
        vals = [v for v in _bounds(space, method, "val_fraction", 0.1)
                if isinstance(v, int | float) and not isinstance(v, bool)]
        if vals and min(vals) <= 0:
            raise ConfigError(
                "params.val_fraction: 0 leaves no validation split, but the accuracy objective "
                "is searched on val_accuracy (the test split is never searched on); use a value "
                "in (0, 0.5), e.g. 0.1")


def check_resources(space: SearchSpace, cpus: float, gpus: float, where: str) -> None:
    """A trial must fit on one node: ``cpus``/``gpus`` are the largest node's."""
    if space.cpus_per_trial > cpus:
        raise ConfigError(f"search.cpus_per_trial: {space.cpus_per_trial:g} CPUs per trial, but "
                          f"{where} has at most {cpus:g} on one node; use at most {cpus:g}")
    if space.gpus_per_trial > gpus:
        raise ConfigError(f"search.gpus_per_trial: {space.gpus_per_trial:g} GPUs per trial, but "
                          f"{where} has {gpus:g}" + ("" if gpus else
                                                      "; set gpus_per_trial: 0"))


def local_resources() -> tuple[float, float]:
    """CPUs and CUDA devices of this machine (what a local Ray offers)."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return float(cpus), float(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def cluster_resources() -> tuple[float, float]:
    """The largest CPU and GPU counts of one alive node of the connected Ray cluster."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes), default=0.0)
    gpus = max((n.get("Resources", {}).get("GPU", 0.0) for n in nodes), default=0.0)
    return float(cpus), float(gpus)


def check_data_and_model(space: SearchSpace) -> dict[str, Any]:
    """Load the data as a trial would, then build every method's model on the meta device at
    its widest and run a dummy batch through it. Returns the data set's shape."""
    import lilnetx

    field = "data_root" if space.data_root else "dataset"
    try:
        splits = lilnetx.create_dataset(space.dataset, space.data_root)
    except LilNetXError as e:
        raise ConfigError(f"{field}: {e}") from None
    info = splits.info
    del splits
    shape = {"channels": info.channels, "height": info.height, "width": info.width,
             "num_classes": info.num_classes}
    for method in space.methods:
        widths = [float(w) for w in _bounds(space, method, "width", 1.0)
                  if isinstance(w, int | float) and not isinstance(w, bool)]
        for width in sorted(set(widths or [1.0]), reverse=True)[:1]:
            check_model(space.model, info, width, "params.width" if widths != [1.0] else "model")
    return shape


def check_model(model: str, info, width: float, field: str) -> None:
    """Build ``model`` for ``info`` (a :class:`lilnetx.data.DataInfo`) on the meta device, push a
    batch of 2 through, and check its architecture against the ``.lnx`` parameter budget."""
    import torch

    from lilnetx.fileformat.archspec import check_architecture, registry_arch
    from lilnetx.models import create_model

    what = f"{info.channels}x{info.height}x{info.width}, {info.num_classes} classes"
    name = _short(model.get("factory")) if isinstance(model, dict) else model
    if not isinstance(model, dict):  # a factory model is checked on its meta network below
        arch = registry_arch(model, in_channels=info.channels, image_size=info.height,
                             num_classes=info.num_classes, width=width)
        try:
            check_architecture(arch)
        except LilNetXError as e:
            raise ConfigError(f"{field}: {model} at width {width:g} cannot be stored: "
                              f"{_short(e)}") from None
    net = None
    try:
        with torch.device("meta"):
            net = create_model(model, in_channels=info.channels, image_size=info.height,
                               num_classes=info.num_classes, width=width)
            out = net(torch.empty(2, info.channels, info.height, info.width))
    except LilNetXError as e:
        raise ConfigError(f"model: {e}") from None
    except Exception as e:  # a shape mismatch deep inside the user's or torchvision's network
        if isinstance(model, dict) and net is not None and "meta" in str(e):
            # a data-dependent forward (it reads values): fx, which the file needs, says why
            check_factory_model(net, name)
            return
        raise ConfigError(f"model: {name} cannot run on {info.name} inputs ({what}): "
                          f"{type(e).__name__}: {_short(e)}") from None
    if tuple(out.shape) != (2, info.num_classes):
        raise ConfigError(f"model: {name} on {info.name} inputs ({what}) gives outputs of shape "
                          f"{tuple(out.shape)}, but (N, {info.num_classes}) logits are needed")
    if isinstance(model, dict):
        check_factory_model(net, name)


def check_factory_model(net, name: str) -> None:
    """A factory model's file records its traced graph: its size must fit the ``.lnx`` budget
    and ``torch.fx`` must be able to trace it (checked on the meta network; whether every
    operator is in the graph allowlist is known only when a trial describes the trained
    network, and a trial that cannot is failed with the reason)."""
    import torch.fx

    from lilnetx.fileformat.limits import MAX_PARAMS

    count = sum(t.numel() for t in [*net.parameters(), *net.buffers()])
    if count > MAX_PARAMS:
        raise ConfigError(f"model: {name} holds {count:,} parameters and buffers, more than the "
                          f"{MAX_PARAMS:,} a .lnx file may hold")
    try:
        torch.fx.symbolic_trace(net)
    except Exception as e:  # the user's forward, traced symbolically
        raise ConfigError(f"model: {name} cannot be traced with torch.fx, so its file could "
                          f"not record its graph: {type(e).__name__}: {_short(e)}") from None


def _writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lilnetx-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable: {e.strerror or e}") from None


def check_storage(uri: str, experiment: str) -> None:
    """The sqlite database's folder, and the experiment's artifact location when it is a local
    folder, can be written (a server checks its own storage)."""
    from urllib.parse import unquote, urlparse

    from . import tracking

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.exists():
            if not os.access(db, os.W_OK):
                raise ConfigError(f"tracking database {db} is not writable")
        else:
            _writable_dir(db.parent, "the folder of the tracking database")
    if tracking.is_server(uri):
        return
    location = None
    if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).exists():
        exp = tracking.client(uri).get_experiment_by_name(experiment)
        location = exp.artifact_location if exp is not None else None
    location = location or tracking.default_artifact_location(uri, experiment)
    if location and location.startswith("file:"):
        _writable_dir(Path(unquote(urlparse(location).path)), "artifact location")
    elif location and "://" not in location:
        _writable_dir(Path(location), "artifact location")


def check_starts(space: SearchSpace) -> None:
    """Each method's ``init_from`` names a readable start file of a supported kind."""
    from lilnetx.core.init_from import check_start_path

    for method, entry in space.methods.items():
        if entry.get("init_from"):
            try:
                check_start_path(entry["init_from"])
            except LilNetXError as e:
                raise ConfigError(f"methods.{method}.init_from: {_short(e)}") from None


def check_space(space: SearchSpace, *, cluster: bool) -> None:
    """Everything about the space that does not need the cluster (run in the driver)."""
    check_objectives(space)
    if not cluster:
        check_starts(space)
    if not cluster:
        check_resources(space, *local_resources(), "this machine")
        check_data_and_model(space)
