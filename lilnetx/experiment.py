"""One training run from names and numbers: data, model, method, training, measurements.

This is what ``lilnetx train`` and every sweep trial call. The summary keys are those of the
project's interface (``accuracy``, ``bits_estimate``, ``slice_sparsity``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lilnetx.core.model import LilNetXModel
from lilnetx.data import DataSplits, create_dataset
from lilnetx.errors import ConfigError
from lilnetx.fileformat.archspec import registry_arch
from lilnetx.methods import Method, create_method
from lilnetx.models import create_model
from lilnetx.stats import LayerStats, layer_stats, plain_layer_stats, summarize
from lilnetx.train import TrainConfig, TrainResult, evaluate_accuracy, pick_device


@dataclass
class RunSpec:
    """Everything that defines one run. ``train`` holds the optimization hyperparameters,
    ``options`` the method's own parameters (see ``lilnetx methods``), ``init_from`` trained
    weights to start from (a state dict ``.pt``/``.pth``, ``.safetensors`` or ``.lnx`` file; see
    :mod:`lilnetx.core.init_from`) for methods that accept one."""

    model: str = "lenet5"
    dataset: str = "fashion_mnist"
    method: str = "lilnetx"
    width: float = 1.0
    data_root: str | None = None
    val_fraction: float = 0.1
    limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    """Options of the data set's loader (``image_size``, ``workers`` for ``imagefolder``)."""

    def validate(self) -> RunSpec:
        self.create_method()
        self.train.validate()
        if self.init_from is not None:
            from lilnetx.core.init_from import check_start_path

            check_start_path(self.init_from)
        return self

    def create_method(self) -> Method:
        """A fresh instance of the run's method with its validated options."""
        method = create_method(self.method, **self.options)
        if self.init_from is not None and not method.accepts_init:
            raise ConfigError(f"init_from (start from a trained network) does not apply to "
                              f"method {self.method}")
        return method


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
    method: Method | None = None
    """The method instance that trained the model (it encodes the file)."""
    slim: nn.Module | None = None
    """The slim network, once :func:`finalize` has made it."""


def dense_bytes(net: nn.Module) -> int:
    """Bytes of a network's parameters and buffers as stored uncompressed (fp32 for floats)."""
    tensors = list(net.parameters()) + list(net.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def param_count(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def data_description(info) -> dict:
    """What a file records of the data its network expects (name, normalization, shape)."""
    return {"name": str(info.name)[:200], "mean": list(info.mean), "std": list(info.std),
            "channels": info.channels, "height": info.height, "width": info.width}


def arch_of(spec: RunSpec, splits: DataSplits) -> dict | None:
    """The registry description of the run's network; ``None`` for a factory model (the user's
    code), whose file records its traced graph instead (:func:`graph_arch`)."""
    if isinstance(spec.model, dict):
        return None
    info = splits.info
    return registry_arch(
        spec.model, in_channels=info.channels, image_size=info.height,
        num_classes=info.num_classes, width=spec.width, data=data_description(info))


def graph_arch(plain: nn.Module, splits: DataSplits) -> dict:
    """The graph description of a trained network with no registry name, traced on two test
    images (:func:`lilnetx.fileformat.graphtrace.describe`), with the data it expects."""
    from lilnetx.fileformat.graphtrace import describe

    n = min(2, len(splits.test))
    example = torch.stack([splits.test[i][0] for i in range(n)])
    arch = describe(plain, example)
    arch["data"] = data_description(splits.info)
    return arch


def build(spec: RunSpec, splits: DataSplits, method: Method | None = None) -> nn.Module:
    """The network of ``spec`` for ``splits``' input shape, prepared by its method (LilNetX
    converts it); its ``arch`` attribute describes how to rebuild it."""
    info = splits.info
    torch.manual_seed(spec.train.seed)
    net = create_model(spec.model, in_channels=info.channels, image_size=info.height,
                       num_classes=info.num_classes, width=spec.width)
    model = (method or spec.create_method()).prepare(net, width=spec.width)
    model.arch = arch_of(spec, splits)
    return model


def _start_network(spec: RunSpec, splits: DataSplits) -> nn.Module:
    """The plain network of ``spec`` holding the weights of ``spec.init_from``, checked key by
    key and shape by shape against the run's architecture."""
    from lilnetx.core.init_from import start_network

    info = splits.info
    reference = create_model(spec.model, in_channels=info.channels, image_size=info.height,
                             num_classes=info.num_classes, width=spec.width)
    return start_network(spec.init_from, reference, f"the run's {spec.model} for {spec.dataset}")


def run(spec: RunSpec, progress: Callable[[dict], None] | None = None) -> RunOutcome:
    """Load the data, build the model, train it with the run's method, and measure it on the
    network the file will store."""
    spec.validate()
    method = spec.create_method()
    if spec.train.lr is None:
        spec = replace(spec, train=replace(spec.train, lr=method.default_lr))
    splits = create_dataset(spec.dataset, spec.data_root, val_fraction=spec.val_fraction,
                            seed=spec.train.seed, limit=spec.limit, **spec.data_options)
    model = build(spec, splits, method)
    init = _start_network(spec, splits) if spec.init_from else None
    result = method.train(model, splits, spec.train, progress, init=init)
    return measure(spec, model, splits, result, method)


def measure(spec: RunSpec, model: nn.Module, splits: DataSplits, result: TrainResult,
            method: Method | None = None) -> RunOutcome:
    """Accuracy of the network the method stores, on validation and test; sparsity and rate
    statistics; the method's own metrics."""
    method = method or spec.create_method()
    device = pick_device(spec.train.device)
    plain = method.plain(model)
    plain.eval()
    evaluated = plain.to(device)
    summary = {
        "accuracy": evaluate_accuracy(evaluated, splits.test, device=device,
                                      workers=splits.workers),
        "val_accuracy": evaluate_accuracy(evaluated, splits.val, device=device,
                                          workers=splits.workers),
    }
    plain = evaluated.cpu()
    layers = layer_stats(model) if isinstance(model, LilNetXModel) else plain_layer_stats(plain)
    summary.update(summarize(layers))
    summary["params"] = param_count(plain)
    summary["dense_bytes"] = dense_bytes(plain)
    summary["train_seconds"] = result.seconds
    summary["epochs"] = spec.train.epochs
    summary.update(method.metrics(model))
    return RunOutcome(model=model, plain=plain, splits=splits, summary=summary, layers=layers,
                      result=result, arch=getattr(model, "arch", None), method=method)


def finalize(outcome: RunOutcome, path: str, *, latency: bool = True,
             onnx_path: str | None = None) -> dict:
    """Write the ``.lnx`` file of a run and measure size, FLOPs and latency of its slim network.

    Updates and returns ``outcome.summary`` (keys ``size_bytes``, ``compression_ratio``,
    ``flops``, ``dense_flops``, ``sparse_flops``, ``channel_sparsity``, ``latency_ms``, ...) and
    sets ``outcome.slim``.
    """
    from lilnetx.deploy.export import write_and_measure

    if outcome.arch is None:
        outcome.arch = graph_arch(outcome.plain, outcome.splits)
    metrics, outcome.slim = write_and_measure(
        outcome.model, outcome.plain, path, dense_bytes=outcome.summary["dense_bytes"],
        latency=latency, onnx_path=onnx_path, arch=outcome.arch,
        encode=outcome.method.encode if outcome.method is not None else None)
    outcome.summary.update(metrics)
    return outcome.summary
