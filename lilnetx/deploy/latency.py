"""Inference latency of a network, measured the same way for every model.

Median wall time of a forward pass under ``torch.inference_mode()``, after warm-up, with a fixed
torch thread count, in **milliseconds**.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn


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
    times: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            net(x)
        sync()
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            net(x)
            sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= 20 * repeats:
                break
    return 1000.0 * statistics.median(times)
