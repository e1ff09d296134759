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
        raise FormatError(f"unsupported architecture description kind {arch.get('kind')!r}")
    try:
        return create_model(str(arch["model"]), in_channels=int(arch["in_channels"]),
                            image_size=int(arch["image_size"]),
                            num_classes=int(arch["num_classes"]), width=float(arch["width"]))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise FormatError(f"the file's architecture cannot be built: {e}") from None
