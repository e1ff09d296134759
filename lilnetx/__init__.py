"""LilNetX: joint rate and structured-sparsity training of neural networks (ICLR 2023).

Public API::

    net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
    model = lilnetx.convert(net)          # latent reparameterized LilNetXModel
    lilnetx.fit(model, splits, lilnetx.TrainConfig(lambda_rate=1e-4))
    plain = lilnetx.decode(model)         # plain torch model, decoded rounded weights

Units: rates are **bits**, file sizes **bytes**, sparsities fractions in [0, 1].
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "data": ("DataInfo", "DataSplits", "create_dataset", "dataset_names", "iterate_batches",
             "register_dataset", "splits_from_arrays"),
    "errors": ("ConfigError", "DataError", "FormatError", "LilNetXError"),
    "experiment": ("RunSpec", "run"),
    "fileformat": ("load", "save"),
    "core.latent": ("GroupDecoder", "LatentConv2d", "LatentLinear", "round_ste"),
    "methods": ("Method", "Param", "create_method", "method_names", "register_method"),
    "metrics": ("Metric", "format_metric", "format_param", "format_size", "metric",
                "metric_names", "register_metric"),
    "core.model": ("LilNetXModel", "convert", "decode"),
    "models": ("create_model", "model_names", "register_model"),
    "deploy.slimming": ("count_macs", "slim"),
    "stats": ("LayerStats", "layer_kind", "layer_stats", "layer_title", "summarize"),
    "train": ("TrainConfig", "TrainingDiverged", "evaluate_accuracy", "fit", "pick_device"),
}
"""Public names by the module that defines them. They are imported on first use (PEP 562), so
``import lilnetx.errors`` or ``lilnetx --help`` does not pay for importing torch."""
_WHERE = {name: module for module, names in _API.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)  # a submodule
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
