"""From a trained model to what a user ships: the ``.lnx`` file, the slim network, its FLOPs and
latency, and an optional ONNX file of the slim network."""

from __future__ import annotations

import os

import torch
from torch import nn

from lilnetx import fileformat
from lilnetx.deploy.latency import latency_ms
from lilnetx.deploy.slimming import count_macs, slim
from lilnetx.errors import ConfigError


def example_input(arch: dict, batch: int = 1) -> torch.Tensor:
    """A random input batch (batch, C, S, S) for the architecture description ``arch``; for a
    graph architecture, (batch, *input_shape), the shape it was traced with."""
    shape = arch.get("input_shape")
    if arch.get("kind") == "graph" and isinstance(shape, list | tuple):
        return torch.randn(batch, *(int(s) for s in shape))
    s = int(arch["image_size"])
    return torch.randn(batch, int(arch["in_channels"]), s, s)


def out_channels(net: nn.Module) -> int:
    """Total output channels/features of the conv and linear layers of ``net``."""
    return sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
               for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def export_onnx(net: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> None:
    """Write ``net`` as ONNX (opset 17, dynamic batch), input ``input``, output ``logits``."""
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ConfigError(f"ONNX path must end with .onnx, but got {path!r}")
    torch.onnx.export(net.eval(), (example,), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def slim_metrics(plain: nn.Module, arch: dict, *, latency: bool = True,
                 onnx_path: str | None = None,
                 round_to: int | None = None,
                 round_narrow: bool = True) -> tuple[nn.Module, dict]:
    """Slim ``plain`` and measure it against the dense network.

    Keys: ``flops``, ``dense_flops``, ``sparse_flops`` (MACs per sample), ``channel_sparsity``
    (fraction of conv/linear output channels removed), and with ``latency``: ``latency_ms``
    and ``latency_ms_b64`` (slim, batch 1 and 64), ``dense_latency_ms`` and
    ``dense_latency_ms_b64`` (same measurement of the unslimmed network); with ``onnx_path``
    too (the slim network written there as ONNX): ``onnx_latency_ms`` and
    ``onnx_latency_ms_b64``, the same model under ONNX Runtime (one thread; needs
    ``onnxruntime``). ``round_to``, ``round_narrow``: see :func:`lilnetx.slim`.
    """
    x = example_input(arch)
    slim_net = slim(plain, x, round_to=round_to, round_narrow=round_narrow)
    dense_counts, slim_counts = count_macs(plain, x), count_macs(slim_net, x)
    out = {
        "flops": slim_counts["flops"],
        "dense_flops": dense_counts["flops"],
        "sparse_flops": dense_counts["sparse_flops"],
        "channel_sparsity": 1.0 - out_channels(slim_net) / max(out_channels(plain), 1),
    }
    if latency:
        out.update(latency_metrics(slim_net, plain, tuple(x.shape[1:])))
    if onnx_path:
        export_onnx(slim_net, x, onnx_path)
        if latency:
            from lilnetx.deploy.latency import onnx_latency_ms

            shape = tuple(x.shape[1:])
            out["onnx_latency_ms"] = onnx_latency_ms(onnx_path, shape, batch=1)
            out["onnx_latency_ms_b64"] = onnx_latency_ms(onnx_path, shape, batch=64)
    return slim_net, out


def latency_metrics(slim_net: nn.Module, plain: nn.Module,
                    input_shape: tuple[int, ...]) -> dict[str, float]:
    """``latency_ms`` and ``latency_ms_b64`` of ``slim_net`` (batch 1 and 64), and
    ``dense_latency_ms`` and ``dense_latency_ms_b64`` of ``plain``, in milliseconds
    (:func:`lilnetx.deploy.latency.latency_ms`; ``input_shape`` is one sample's (C, H, W))."""
    return {"latency_ms": latency_ms(slim_net, input_shape, batch=1),
            "latency_ms_b64": latency_ms(slim_net, input_shape, batch=64),
            "dense_latency_ms": latency_ms(plain, input_shape, batch=1),
            "dense_latency_ms_b64": latency_ms(plain, input_shape, batch=64)}


def write_and_measure(model, plain: nn.Module, path: str | os.PathLike, *,
                      dense_bytes: int, latency: bool = True, onnx_path: str | None = None,
                      arch: dict | None = None, quantized: dict | None = None,
                      encode=None, example_input: torch.Tensor | None = None
                      ) -> tuple[dict, nn.Module]:
    """Save ``model`` as ``.lnx`` at ``path``; size, compression and slim metrics, and the slim
    network. ``encode(model, arch) -> bytes`` (a method's encoder) makes the file's bytes;
    without it :func:`lilnetx.fileformat.save` stores the model by its kind. Without ``arch``
    (nor a model ``arch``), ``example_input`` (N, C, H, W) makes it the traced graph
    (:func:`lilnetx.fileformat.describe_graph`)."""
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(parent, exist_ok=True)
    arch = arch or getattr(model, "arch", None)
    if not arch and example_input is not None:
        arch = fileformat.describe_graph(model, example_input)
    if encode is None:
        size = fileformat.save(model, path, arch=arch, quantized=quantized)
    else:
        fileformat.check_architecture(arch)  # never encode a network load would refuse
        size = fileformat.write(encode(model, arch), path)
    out = {"size_bytes": size, "compression_ratio": dense_bytes / size, "model_path": os.fspath(path)}
    slim_net, metrics = slim_metrics(plain, arch, latency=latency, onnx_path=onnx_path)
    out.update(metrics)
    return out, slim_net
