"""Architecture descriptions: plain JSON that says how to rebuild a network without pickle.

The description of a built-in or torchvision model is its registry name and constructor
arguments::

    {"kind": "registry", "model": "resnet20", "in_channels": 3, "image_size": 32,
     "num_classes": 10, "width": 1.0, "data": {"name": "cifar10", "mean": [...], "std": [...]}}

``data`` (optional) records the input normalization the network expects.
"""

from __future__ import annotations

from torch import nn

from .errors import ConfigError, FormatError
from .models import create_model

LIMITS = {"in_channels": 4096, "image_size": 4096, "num_classes": 1_000_000}
"""Largest values a file's architecture may declare (guards against crafted files)."""
MAX_WIDTH = 64.0


def registry_arch(model: str, *, in_channels: int, image_size: int, num_classes: int,
                  width: float = 1.0, data: dict | None = None) -> dict:
    """The description of a model built by :func:`lilnetx.models.create_model`."""
    arch = {"kind": "registry", "model": model, "in_channels": int(in_channels),
            "image_size": int(image_size), "num_classes": int(num_classes), "width": float(width)}
    if data is not None:
        arch["data"] = data
    return arch


def build_from_arch(arch: dict) -> nn.Module:
    """A freshly initialized network of the described architecture (weights to be loaded)."""
    if not isinstance(arch, dict) or arch.get("kind") != "registry":
        kind = arch.get("kind") if isinstance(arch, dict) else None
        raise FormatError(f"unsupported architecture description kind {kind!r}")
    model = arch.get("model")
    width = arch.get("width")
    checks = [(k, arch.get(k), hi) for k, hi in LIMITS.items()]
    bad = [f"{k}={v!r}" for k, v, hi in checks if type(v) is not int or not 1 <= v <= hi]
    if not isinstance(model, str) or not model:
        bad.append(f"model={model!r}")
    if type(width) not in (int, float) or not 0 < width <= MAX_WIDTH:
        bad.append(f"width={width!r}")
    if bad:
        raise FormatError(f"the file's architecture has invalid values: {', '.join(bad)}")
    try:
        return create_model(model, in_channels=arch["in_channels"],
                            image_size=arch["image_size"], num_classes=arch["num_classes"],
                            width=float(width))
    except (ConfigError, RuntimeError, ValueError, OverflowError, MemoryError) as e:
        raise FormatError(f"the file's architecture cannot be built: {e}") from None
