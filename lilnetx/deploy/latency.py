"""Inference latency of a network, measured the same way for every model.

Median wall time of a forward pass under ``torch.inference_mode()``, after warm-up, with a fixed
torch thread count, in **milliseconds** (:func:`latency_ms`); the same measurement of an exported
ONNX model under ONNX Runtime's CPU provider (:func:`onnx_latency_ms`, the deployment path).
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn

from lilnetx.errors import ConfigError, LilNetXError, check_positive_int


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set ``torch.set_num_threads(n)`` (no change when ``n`` is None)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def latency_ms(
    net: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
    min_seconds: float = 0.2,
    device: str = "cpu",
) -> float:
    """Median latency in ms of ``net`` on a random batch of shape ``(batch, *input_shape)``.

    Repeats at least ``repeats`` times and at least ``min_seconds`` of measurement.
    ``threads`` fixes the torch CPU thread count for the measurement (1 by default, so that
    concurrent measurements on one machine interfere less).
    """
    net = net.to(device).eval()
    x = torch.randn(batch, *input_shape, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def run():
        net(x)
        sync()

    with torch_threads(threads), torch.inference_mode():
        return _median_ms(run, warmup, repeats, min_seconds)


def _median_ms(run, warmup: int, repeats: int, min_seconds: float) -> float:
    """Median wall time in ms of ``run()`` after ``warmup`` calls: at least ``repeats`` calls and
    ``min_seconds`` of measurement, at most ``20 * repeats`` calls."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 * repeats:
            break
    return 1000.0 * statistics.median(times)


def onnx_session(model: str | os.PathLike | bytes, *, threads: int = 1, spinning: bool = True):
    """An ONNX Runtime inference session on the CPU provider for ``model`` (a path to an
    ``.onnx`` file, or its bytes): ``threads`` intra-op threads, one inter-op thread, sequential
    execution, every graph optimization enabled (BatchNorm folding, fusions).

    ``spinning=False`` stops the intra-op threads from spin-waiting after a run (ONNX Runtime's
    ``session.intra_op.allow_spinning``). Leave it on to time one session alone; turn it off
    when several sessions of one process are timed in turn, where the spinning threads of the
    one that just ran take the cores from the next (``benchmarks/ort_spinning.py``).

    Raises :class:`~lilnetx.errors.LilNetXError` when ``onnxruntime`` is not installed and
    :class:`~lilnetx.errors.ConfigError` for a bad thread count or a model ONNX Runtime cannot
    load.
    """
    check_positive_int("threads", threads)
    try:
        import onnxruntime as ort
    except ImportError:
        raise LilNetXError("ONNX Runtime latency needs the onnxruntime package: "
                           "pip install onnxruntime (or the [all] extra)") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph...)
        what = "the given bytes" if isinstance(model, bytes) else repr(src)
        raise ConfigError(f"ONNX Runtime cannot load {what} as an ONNX model: {e}") from None


def onnx_latency_ms(
    model: str | os.PathLike | bytes,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    min_seconds: float = 0.2,
) -> float:
    """Median latency in ms of an ONNX model under ONNX Runtime (CPU) on a random float32 batch
    of shape ``(batch, *input_shape)``, measured as :func:`latency_ms` measures torch: ``warmup``
    runs first, then at least ``repeats`` runs and ``min_seconds`` of measurement.

    ``model`` is the path of an ``.onnx`` file (e.g. written by
    :func:`lilnetx.deploy.export.export_onnx`) or its bytes; its first input is fed. The session
    is :func:`onnx_session` with ``threads`` intra-op threads. Requires ``onnxruntime``.
    """
    check_positive_int("batch", batch)
    sess = onnx_session(model, threads=threads)
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(0)
    feed = {name: torch.randn(batch, *input_shape, generator=gen).numpy()}
    try:
        sess.run(None, feed)
    except Exception as e:  # a shape the model does not take (onnxruntime's own exceptions)
        want = sess.get_inputs()[0].shape
        raise ConfigError(f"the ONNX model's input {name!r} has shape {want}, but got "
                          f"{list(feed[name].shape)} (batch {batch}, input_shape "
                          f"{tuple(input_shape)}): {e}") from None
    return _median_ms(lambda: sess.run(None, feed), warmup, repeats, min_seconds)
