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
from .stats import LayerStats, layer_stats, plain_layer_stats, summarize
from .train import TrainConfig, TrainResult, evaluate_accuracy, fit, pick_device

METHODS = ("lilnetx", "dense", "quant", "imp")
"""``lilnetx`` (the method), ``dense`` (plain training, fp32 file), ``quant`` (dense training,
then uniform post-training quantization to ``bits``), ``imp`` (dense training, then iterative
magnitude pruning with retraining; nonzeros quantized to ``bits``, 8 by default)."""


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
    bits: int | None = None
    target_sparsity: float = 0.9
    phases: int = 3
    retrain_epochs: int = 1
    schedule: str = "SLR"
    init_from: str | None = None

    def validate(self) -> RunSpec:
        from .imp import SCHEDULES
        from .quant import check_bits

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        self.train.validate()
        if self.method in ("quant", "imp"):
            check_bits(self.bits if self.bits is not None else 8)
        if self.method == "imp":
            if not 0 <= self.target_sparsity < 1:
                raise ConfigError(f"target_sparsity must be in [0, 1), but got "
                                  f"{self.target_sparsity}")
            if isinstance(self.phases, bool) or not isinstance(self.phases, int) or self.phases < 1:
                raise ConfigError(f"phases must be a positive integer, but got {self.phases!r}")
            if self.schedule not in SCHEDULES:
                raise ConfigError(f"unknown retraining schedule {self.schedule!r}; choose one "
                                  f"of: {', '.join(SCHEDULES)}")
        if self.init_from is not None and self.method == "lilnetx":
            raise ConfigError("init_from (start from a dense run) applies to dense, quant and imp")
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
    arch: dict | None = None
    quantized: dict | None = None
    slim: nn.Module | None = None
    """The slim network, once :func:`finalize` has made it."""


def dense_bytes(net: nn.Module) -> int:
    """Bytes of a network's parameters and buffers as stored uncompressed (fp32 for floats)."""
    tensors = list(net.parameters()) + list(net.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def param_count(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def arch_of(spec: RunSpec, splits: DataSplits) -> dict:
    info = splits.info
    return registry_arch(
        spec.model, in_channels=info.channels, image_size=info.height,
        num_classes=info.num_classes, width=spec.width,
        data={"name": info.name, "mean": list(info.mean), "std": list(info.std),
              "channels": info.channels, "height": info.height, "width": info.width})


def build(spec: RunSpec, splits: DataSplits) -> nn.Module:
    """The network of ``spec`` for ``splits``' input shape, converted when the method asks
    (its ``arch`` attribute describes how to rebuild it)."""
    info = splits.info
    torch.manual_seed(spec.train.seed)
    net = create_model(spec.model, in_channels=info.channels, image_size=info.height,
                       num_classes=info.num_classes, width=spec.width)
    model = convert(net, width=spec.width) if spec.method == "lilnetx" else net
    model.arch = arch_of(spec, splits)
    return model


def run(spec: RunSpec, progress: Callable[[dict], None] | None = None) -> RunOutcome:
    """Load the data, build and train the model, and measure it on the decoded network."""
    spec.validate()
    splits = create_dataset(spec.dataset, spec.data_root, val_fraction=spec.val_fraction,
                            seed=spec.train.seed, limit=spec.limit)
    model = build(spec, splits)
    if spec.method == "lilnetx":
        result = fit(model, splits, spec.train, progress)
        return measure(spec, model, splits, result)
    return _run_plain(spec, model, splits, progress)


def _run_plain(spec: RunSpec, net: nn.Module, splits: DataSplits, progress) -> RunOutcome:
    """dense, quant and imp: train dense (or start from ``init_from``), prune, quantize."""
    from .fileformat import load
    from .imp import imp
    from .quant import apply_quantization, information_bits, quantize_layers

    if spec.init_from:
        start = load(spec.init_from)
        if [tuple(p.shape) for p in start.state_dict().values()] != [
                tuple(p.shape) for p in net.state_dict().values()]:
            raise ConfigError(f"init_from {spec.init_from!r} is not a {spec.model} for "
                              f"{spec.dataset}")
        net.load_state_dict(start.state_dict(), strict=False)
        result = TrainResult()
    else:
        result = fit(net, splits, spec.train, progress)
    if spec.method == "imp":
        res = imp(net, splits, spec.train, target_sparsity=spec.target_sparsity,
                  phases=spec.phases, retrain_epochs=spec.retrain_epochs,
                  schedule=spec.schedule, progress=progress)
        result.history += res.history
        result.seconds += res.seconds
    quantized = None
    if spec.method in ("quant", "imp"):
        quantized = quantize_layers(net, spec.bits if spec.bits is not None else 8)
        apply_quantization(net, quantized)
    net.eval()
    outcome = measure(spec, net, splits, result)
    outcome.arch, outcome.quantized = net.arch, quantized
    if quantized is not None:
        outcome.summary["bits_estimate"] = information_bits(quantized)
    return outcome


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
    layers = layer_stats(model) if isinstance(model, LilNetXModel) else plain_layer_stats(model)
    summary.update(summarize(layers))
    summary["params"] = param_count(plain)
    summary["dense_bytes"] = dense_bytes(plain)
    summary["train_seconds"] = result.seconds
    summary["epochs"] = spec.train.epochs
    return RunOutcome(model=model, plain=plain, splits=splits, summary=summary, layers=layers,
                      result=result, arch=getattr(model, "arch", None))


def finalize(outcome: RunOutcome, path: str, *, latency: bool = True,
             onnx_path: str | None = None) -> dict:
    """Write the ``.lnx`` file of a run and measure size, FLOPs and latency of its slim network.

    Updates and returns ``outcome.summary`` (keys ``size_bytes``, ``compression_ratio``,
    ``flops``, ``dense_flops``, ``sparse_flops``, ``channel_sparsity``, ``latency_ms``, ...) and
    sets ``outcome.slim``.
    """
    from .export import write_and_measure

    metrics, outcome.slim = write_and_measure(
        outcome.model, outcome.plain, path, dense_bytes=outcome.summary["dense_bytes"],
        latency=latency, onnx_path=onnx_path, arch=outcome.arch, quantized=outcome.quantized)
    outcome.summary.update(metrics)
    return outcome.summary
