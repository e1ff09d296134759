"""The metrics a run reports, in one registry: name, direction, unit, label and formatter.

A metric registered here is a sweep objective in YAML (``objectives:``), an axis of the
dashboard with its direction and unit, and a column of ``lilnetx pareto``: add one with
:func:`register_metric` (a method may report extra metrics of its own) or through the
``lilnetx.metrics`` entry-point group.

Units: ``fraction`` (in [0, 1], shown as a percentage), ``bytes``, ``ratio`` (shown as 49x),
``bits``, ``macs`` (multiply-accumulates per sample), ``ms``, ``count``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lilnetx.errors import ConfigError
from lilnetx.registry import Registry

UNITS = ("fraction", "bytes", "ratio", "bits", "macs", "ms", "count")


@dataclass(frozen=True)
class Metric:
    """A reported quantity. ``direction``: ``max`` or ``min`` is better. ``searched_as``: the
    metric a sweep selects on when this one is an objective (``accuracy`` is searched on
    ``val_accuracy`` so that a sweep never selects on the test set). ``objective``: offered as
    a sweep objective and a dashboard axis."""

    name: str
    direction: str
    unit: str
    label: str
    searched_as: str | None = None
    objective: bool = True

    def format(self, value: float | None) -> str:
        """``value`` in the units people read: 88.5%, 5.0 KB, 49x, 1.2 M, 0.84 ms."""
        return format_value(self.unit, value)


def _scaled(v: float) -> str:
    """A scaled value: one decimal below 100 (5.0, 23.4), none from 100 (512)."""
    return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


def format_value(unit: str, value: float | None) -> str:
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    v = float(value)
    if unit == "fraction":
        return f"{100 * v:.1f}%"
    if unit == "bytes":
        for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
            if abs(v) >= scale:
                return f"{_scaled(v / scale)} {suffix}"
        return f"{v:.0f} B"
    if unit == "ratio":
        return f"{v:.0f}x" if abs(v) >= 10 else f"{v:.1f}x"
    if unit in ("macs", "count", "bits"):
        tail = {"macs": "", "count": "", "bits": " bit"}[unit]
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(v) >= scale:
                return f"{_scaled(v / scale)} {suffix}{tail.strip()}".rstrip()
        return f"{v:.0f}{tail}"
    if unit == "ms":
        return f"{v:.3g} ms"
    return f"{v:.4g}"


def format_param(value) -> str:
    """A hyperparameter in short notation: ``1e-4``, ``3.2e-5``, ``0.02``, ``128``, ``lenet5``
    (floats to 2 significant digits in scientific form outside [1e-3, 1e4), 3 inside)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        return text if len(text) <= 40 else text[:39] + "\u2026"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mant, exp = f"{value:.1e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def format_size(size_bytes: float | None, dense_bytes: float | None = None) -> str:
    """A file size with its compression ratio: ``5.0 KB, 49x smaller`` (just ``5.0 KB``
    without a positive dense size)."""
    text = format_value("bytes", size_bytes)
    if (isinstance(dense_bytes, int | float) and isinstance(size_bytes, int | float)
            and size_bytes > 0 and math.isfinite(dense_bytes) and dense_bytes > 0):
        text += f", {format_value('ratio', dense_bytes / size_bytes)} smaller"
    return text


def format_metric(name: str, value: float | None) -> str:
    """``value`` of metric ``name`` in its registered unit (4 significant digits when the
    registry does not know the metric)."""
    return format_value(METRICS.get(name).unit if name in METRICS else "", value)


METRICS: Registry[Metric] = Registry("metric", "lilnetx.metrics")


def register_metric(name: str, direction: str, unit: str, label: str, *,
                    searched_as: str | None = None, objective: bool = True) -> Metric:
    """Add a metric to the registry (see :class:`Metric`) and return it."""
    if direction not in ("max", "min"):
        raise ConfigError(f"metric {name!r}: direction must be 'max' or 'min', but got "
                          f"{direction!r}")
    if unit not in UNITS:
        raise ConfigError(f"metric {name!r}: unit must be one of {', '.join(UNITS)}, but got "
                          f"{unit!r}")
    m = Metric(name, direction, unit, label, searched_as, objective)
    METRICS.register(name, m)
    return m


def metric(name: str) -> Metric:
    """The registered metric ``name`` (:class:`ConfigError` naming the choices otherwise)."""
    return METRICS.get(name)


def metric_names(*, objectives_only: bool = False) -> list[str]:
    return [n for n, m in METRICS.items() if m.objective or not objectives_only]


def searched_metric(name: str) -> str:
    """The metric a sweep measures objective ``name`` by (``accuracy`` -> ``val_accuracy``)."""
    m = METRICS.get(name) if name in METRICS else None
    return m.searched_as or name if m is not None else name


register_metric("accuracy", "max", "fraction", "test accuracy", searched_as="val_accuracy")
register_metric("val_accuracy", "max", "fraction", "validation accuracy")
register_metric("size_bytes", "min", "bytes", "file size")
register_metric("compression_ratio", "max", "ratio", "compression ratio")
register_metric("bits_estimate", "min", "bits", "latent information")
register_metric("flops", "min", "macs", "MACs per sample")
register_metric("latency_ms", "min", "ms", "latency at batch 1")
register_metric("weight_sparsity", "max", "fraction", "weight sparsity")
register_metric("slice_sparsity", "max", "fraction", "slice sparsity")
register_metric("channel_sparsity", "max", "fraction", "channels removed")
register_metric("dense_bytes", "min", "bytes", "dense fp32 size", objective=False)
register_metric("params", "min", "count", "parameters", objective=False)
register_metric("dense_flops", "min", "macs", "dense MACs per sample", objective=False)
register_metric("sparse_flops", "min", "macs", "MACs of nonzero slices", objective=False)
register_metric("latency_ms_b64", "min", "ms", "latency at batch 64", objective=False)
