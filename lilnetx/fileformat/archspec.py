"""Architecture descriptions: plain JSON that says how to rebuild a network without pickle.

The description of a built-in or torchvision model is its registry name and constructor
arguments (any other network is described by its graph, ``"kind": "graph"``, see
:mod:`lilnetx.fileformat.graph`)::

    {"kind": "registry", "model": "resnet20", "in_channels": 3, "image_size": 32,
     "num_classes": 10, "width": 1.0, "data": {"name": "cifar10", "mean": [...], "std": [...]}}

``data`` (optional) records the input normalization the network expects.

:func:`check_architecture` builds the described network on PyTorch's ``meta`` device (shapes, no
storage: instant even for a network of billions of parameters) and refuses one holding more than
:data:`lilnetx.fileformat.limits.MAX_PARAMS` numbers; the reader checks a file against that meta network
before it allocates anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lilnetx.errors import ConfigError, FormatError
from lilnetx.fileformat.limits import MAX_PARAMS, cut, short
from lilnetx.models import create_model

LIMITS = {"in_channels": 4096, "image_size": 4096, "num_classes": 1_000_000}
"""Largest values an architecture may declare (guards against crafted files)."""
MAX_WIDTH = 64.0
_BUILD_ERRORS = (ConfigError, RuntimeError, ValueError, TypeError, OverflowError,
                 ZeroDivisionError, MemoryError)


def registry_arch(model: str, *, in_channels: int, image_size: int, num_classes: int,
                  width: float = 1.0, data: dict | None = None) -> dict:
    """The description of a model built by :func:`lilnetx.models.create_model`."""
    arch = {"kind": "registry", "model": model, "in_channels": int(in_channels),
            "image_size": int(image_size), "num_classes": int(num_classes), "width": float(width)}
    if data is not None:
        arch["data"] = data
    return arch


def _arguments(arch: dict) -> dict:
    """The checked keyword arguments of :func:`create_model` for ``arch``."""
    if not isinstance(arch, dict) or arch.get("kind") != "registry":
        kind = arch.get("kind") if isinstance(arch, dict) else None
        raise FormatError(f"unsupported architecture description kind {short(kind)}")
    model = arch.get("model")
    width = arch.get("width")
    checks = [(k, arch.get(k), hi) for k, hi in LIMITS.items()]
    bad = [f"{k}={short(v)} (1..{hi})" for k, v, hi in checks
           if type(v) is not int or not 1 <= v <= hi]
    if not isinstance(model, str) or not model:
        bad.append(f"model={short(model)}")
    if type(width) not in (int, float) or not 0 < width <= MAX_WIDTH:
        bad.append(f"width={short(width)} (above 0, at most {MAX_WIDTH:g})")
    if bad:
        raise FormatError(cut(f"the architecture has invalid values: {', '.join(bad)}"))
    return {"name": model, "in_channels": arch["in_channels"], "image_size": arch["image_size"],
            "num_classes": arch["num_classes"], "width": float(width)}


def _create(kwargs: dict) -> nn.Module:
    try:
        return create_model(**kwargs)
    except _BUILD_ERRORS as e:
        raise FormatError(cut(f"the architecture {short(kwargs['name'])} cannot be built: {e}")
                          ) from None


def _graph(arch) -> bool:
    return isinstance(arch, dict) and arch.get("kind") == "graph"


def build_from_arch(arch: dict) -> nn.Module:
    """A freshly initialized network of the described architecture (weights to be loaded; a
    graph architecture's tensors are zero).

    Allocates every parameter: call :func:`check_architecture` first for a description that
    comes from a file."""
    if _graph(arch):
        from lilnetx.fileformat import graph

        return graph.build_from_arch(arch)
    return _create(_arguments(arch))


_STORAGE = {torch.empty, torch.empty_strided, torch.empty_permuted, torch.zeros, torch.ones,
            torch.full, torch.rand, torch.randn, torch.randint, torch.eye}


class _MetaStorage(TorchFunctionMode):
    """Like ``torch.device("meta")`` for the constructors of parameters and buffers (``empty``,
    ``zeros``, ``rand``...), while ``arange``, ``tensor``, ``linspace`` and friends stay on the
    CPU: for builders that compute with tensor values (torchvision's RegNets call ``.tolist()``
    on widths computed with ``torch.arange``), which fail on the meta device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _STORAGE and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


_SAME_SHAPE = {torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.Tensor.relu,
               torch.Tensor.sigmoid, torch.Tensor.tanh, F.relu, F.relu6, F.hardtanh, F.leaky_relu,
               F.elu, F.gelu, F.silu, F.hardswish}


class _ShapeOnly(TorchFunctionMode):
    """Activations of meta tensors return an empty meta tensor of the same shape without running.
    Their meta kernels are Python references whose first use imports ``torch._dynamo`` (1 s and
    130 MB per process); lenet5's builder runs a forward to size its first linear layer."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SAME_SHAPE and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return torch.empty_like(args[0])
        return func(*args, **(kwargs or {}))


def meta_network(arch: dict) -> tuple[nn.Module, int]:
    """The described network on the ``meta`` device (shapes only) and its parameter count.

    Raises :class:`FormatError` for a bad description or a network holding more than
    :data:`~lilnetx.fileformat.limits.MAX_PARAMS` numbers (parameters and buffers). A graph
    architecture is also run once on a meta input (:func:`lilnetx.fileformat.graph.meta_network`)."""
    if _graph(arch):
        from lilnetx.fileformat import graph

        return graph.meta_network(arch)
    kwargs = _arguments(arch)
    try:
        with torch.device("meta"), _ShapeOnly():
            net = create_model(**kwargs)
    except _BUILD_ERRORS as first:  # bad arguments, or a builder that needs tensor values
        try:
            with _MetaStorage(), _ShapeOnly():
                net = create_model(**kwargs)
        except _BUILD_ERRORS:
            raise FormatError(cut(f"the architecture {short(kwargs['name'])} cannot be built: "
                                  f"{first}")) from None
    params = sum(p.numel() for p in net.parameters())
    total = params + sum(b.numel() for b in net.buffers())
    if total > MAX_PARAMS:
        raise FormatError(
            f"the architecture {short(kwargs['name'])} holds {total:,} parameters and buffers, "
            f"more than the {MAX_PARAMS:,} a .lnx file may hold (lilnetx.fileformat.limits.MAX_PARAMS)")
    return net, params


def check_architecture(arch: dict) -> int:
    """The parameter count of the described network, computed without allocating it.

    Raises :class:`FormatError` for an unknown model, bad arguments, or a network above the
    budget :data:`~lilnetx.fileformat.limits.MAX_PARAMS`; ``load`` and ``save`` both apply it."""
    return meta_network(arch)[1]
