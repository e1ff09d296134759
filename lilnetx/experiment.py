"""One training run from names and numbers: data, model, method, training, measurements.

This is what ``lilnetx train`` and every sweep trial call. The summary keys are those of the
project's interface (``accuracy``, ``bits_estimate``, ``slice_sparsity``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .archspec import registry_arch
from .data import DataSplits, create_dataset
from .errors import ConfigError
from .model import LilNetXModel, convert, decode
from .models import create_model
from .stats import LayerStats, layer_stats, summarize
from .train import TrainConfig, TrainResult, evaluate_accuracy, fit, pick_device

METHODS = ("lilnetx",)


@dataclass
class RunSpec:
    """Everything that defines one run. ``train`` holds the optimization hyperparameters."""

    model: str = "lenet5"
    dataset: str = "fashion_mnist"
    method: str = "lilnetx"
    width: float = 1.0
    data_root: str | None = None
    val_fraction: float = 0.1
    limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunSpec:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        self.train.validate()
        return self


@dataclass
class RunOutcome:
    """Result of :func:`run`: the trained model, its plain decoded network, and measurements."""

    model: nn.Module
    plain: nn.Module
    splits: DataSplits
    summary: dict
    layers: list[LayerStats]
    result: TrainResult


def dense_bytes(net: nn.Module) -> int:
    """Bytes of a network's parameters and buffers as stored uncompressed (fp32 for floats)."""
    tensors = list(net.parameters()) + list(net.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def param_count(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def build(spec: RunSpec, splits: DataSplits) -> nn.Module:
    """The network of ``spec`` for ``splits``' input shape, converted when the method asks."""
    info = splits.info
    torch.manual_seed(spec.train.seed)
    net = create_model(spec.model, in_channels=info.channels, image_size=info.height,
                       num_classes=info.num_classes, width=spec.width)
    model = convert(net, width=spec.width)
    model.arch = registry_arch(
        spec.model, in_channels=info.channels, image_size=info.height,
        num_classes=info.num_classes, width=spec.width,
        data={"name": info.name, "mean": list(info.mean), "std": list(info.std),
              "channels": info.channels, "height": info.height, "width": info.width})
    return model


def run(spec: RunSpec, progress: Callable[[dict], None] | None = None) -> RunOutcome:
    """Load the data, build and train the model, and measure it on the decoded network."""
    spec.validate()
    splits = create_dataset(spec.dataset, spec.data_root, val_fraction=spec.val_fraction,
                            seed=spec.train.seed, limit=spec.limit)
    model = build(spec, splits)
    result = fit(model, splits, spec.train, progress)
    return measure(spec, model, splits, result)


def measure(spec: RunSpec, model: nn.Module, splits: DataSplits, result: TrainResult) -> RunOutcome:
    """Accuracy of the decoded network on validation and test, sparsity and rate statistics."""
    device = pick_device(spec.train.device)
    plain = decode(model) if isinstance(model, LilNetXModel) else model
    plain.eval()
    evaluated = plain.to(device)
    summary = {
        "accuracy": evaluate_accuracy(evaluated, splits.test, device=device),
        "val_accuracy": evaluate_accuracy(evaluated, splits.val, device=device),
    }
    plain = evaluated.cpu()
    layers = layer_stats(model) if isinstance(model, LilNetXModel) else []
    if layers:
        summary.update(summarize(layers))
    summary["params"] = param_count(plain)
    summary["dense_bytes"] = dense_bytes(plain)
    summary["train_seconds"] = result.seconds
    summary["epochs"] = spec.train.epochs
    return RunOutcome(model=model, plain=plain, splits=splits, summary=summary, layers=layers,
                      result=result)


def finalize(outcome: RunOutcome, path: str, *, latency: bool = True,
             onnx_path: str | None = None) -> dict:
    """Write the ``.lnx`` file of a run and measure size, FLOPs and latency of its slim network.

    Updates and returns ``outcome.summary`` (keys ``size_bytes``, ``compression_ratio``,
    ``flops``, ``dense_flops``, ``sparse_flops``, ``channel_sparsity``, ``latency_ms``, ...).
    """
    from .export import write_and_measure

    outcome.summary.update(write_and_measure(
        outcome.model, outcome.plain, path, dense_bytes=outcome.summary["dense_bytes"],
        latency=latency, onnx_path=onnx_path))
    return outcome.summary
