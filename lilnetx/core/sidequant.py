"""Quantization of the *side information*: decoders, biases, BatchNorm and every other float
tensor a compressed file stores beside the latents.

A tensor ``x`` quantized to ``bits`` becomes ``q * 2**e``: integers ``q`` in
``[-2**(bits-1), 2**(bits-1)]`` and one power-of-two step per tensor, ``e = ceil(log2(max|x|))
- (bits - 1)`` (as MPEG NNR / NNCodec store a per-tensor step as a small integer). A power of two
makes ``q * 2**e`` exact in float32, and the rule is idempotent: quantizing a quantized tensor
returns it unchanged, so the file, the exported network and the training forward pass hold the
same values.

Training applies the rule straight-through (:func:`quantize_ste`) to the decoders and the
latent layers' biases; BatchNorm is folded into a per-channel affine map
(:func:`fold_batchnorm`) and quantized at export. ``bits = 0`` turns the quantization off
(float32 side information, as files of format version 1 stored it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_SIDE_BITS = 8
"""Default ``bits`` of every side tensor."""

MAX_SIDE_BITS = 16
MIN_EXPONENT, MAX_EXPONENT = -140, 120
"""Range of the step exponent ``e`` (a float32 step ``2**e`` is representable)."""


def check_side_bits(bits) -> int:
    from lilnetx.errors import ConfigError

    if isinstance(bits, bool) or not isinstance(bits, int) or not (
            bits == 0 or 2 <= bits <= MAX_SIDE_BITS):
        raise ConfigError(f"side_bits must be 0 (float32) or an integer in [2, {MAX_SIDE_BITS}], "
                          f"but got {bits!r}")
    return bits


def step_exponent(max_abs: float, bits: int) -> int:
    """``e`` of the step ``2**e`` for a tensor whose largest magnitude is ``max_abs`` (> 0)."""
    mant, exp = math.frexp(max_abs)  # max_abs = mant * 2**exp, mant in [0.5, 1)
    ceil_log2 = exp - 1 if mant == 0.5 else exp
    return min(max(ceil_log2 - (bits - 1), MIN_EXPONENT), MAX_EXPONENT)


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` on its ``bits``-bit power-of-two grid (same shape, dtype and device; no host
    synchronisation). ``bits = 0`` returns ``x``; an all-zero tensor stays zero."""
    if not bits:
        return x
    m = x.detach().abs().amax() if x.numel() else x.new_zeros(())
    step = _steps(m, bits, x.dtype)
    return torch.round(x / step) * step


OUTLIER = 16.0
"""A folded BatchNorm value more than this many times the median magnitude does not set the
grid (:func:`robust_magnitude`)."""


def robust_magnitude(x: torch.Tensor) -> torch.Tensor:
    """The largest ``|x|`` within :data:`OUTLIER` times the median of the non-zero ``|x|``
    (the largest ``|x|`` itself when no value is that far out; 0 for an all-zero tensor)."""
    mag = x.detach().abs().reshape(-1)
    nz = mag[mag > 0]
    if not nz.numel():
        return mag.new_zeros(())
    inside = nz[nz <= OUTLIER * nz.median()]
    return inside.amax()


def quantize_on(x: torch.Tensor, bits: int, ref: torch.Tensor) -> torch.Tensor:
    """``x`` on the ``bits``-bit power-of-two grid of magnitude ``ref`` (a scalar tensor):
    values beyond ``ref`` take more integer levels than ``2**(bits - 1)``; ``bits = 0`` returns
    ``x``."""
    if not bits:
        return x
    step = _steps(ref.detach().abs(), bits, x.dtype)
    return torch.round(x / step) * step


class _QuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits):
        return quantize(x, bits)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _steps(m: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The grid steps ``2**e`` (same shape as ``m``) of tensors whose largest magnitudes are
    ``m``; a zero magnitude gets the step 1."""
    mant, exp = torch.frexp(m.float())
    ceil_log2 = exp - (mant == 0.5).to(exp.dtype)
    e = (ceil_log2 - (bits - 1)).clamp(MIN_EXPONENT, MAX_EXPONENT)
    step = torch.ldexp(torch.ones_like(m, dtype=dtype), e.to(dtype))
    return torch.where(m > 0, step, torch.ones_like(step))


class _QuantManySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bits, *xs):
        flat = torch.cat([x.reshape(-1) for x in xs])
        m = torch.stack(torch._foreach_norm([x.detach() for x in xs], ord=float("inf")))
        sizes = [x.numel() for x in xs]
        step = _steps(m, bits, flat.dtype).repeat_interleave(
            torch.tensor(sizes, device=flat.device), output_size=flat.numel())
        out = torch.round(flat / step).mul_(step).split(sizes)
        return tuple(o.view(x.shape) for o, x in zip(out, xs, strict=True))

    @staticmethod
    def backward(ctx, *grads):
        return (None, *grads)


def quantize_many_ste(xs: list[torch.Tensor], bits: int) -> list[torch.Tensor]:
    """:func:`quantize_ste` of every tensor of ``xs`` (each on its own grid, the same values),
    in a handful of kernels for all of them instead of a dozen per tensor."""
    if not bits or not xs:
        return list(xs)
    if (any(x.numel() == 0 for x in xs) or len({(x.dtype, x.device) for x in xs}) > 1):
        return [quantize_ste(x, bits) for x in xs]
    return list(_QuantManySTE.apply(bits, *xs))


def quantize_ste(x: torch.Tensor | None, bits: int) -> torch.Tensor | None:
    """:func:`quantize` forward, identity gradient backward (``None`` and ``bits = 0`` pass)."""
    if x is None or not bits:
        return x
    return _QuantSTE.apply(x, bits)


def unit_variance(eps: float) -> float:
    """A float32 ``v`` with ``float32(v + eps) == 1``: a folded BatchNorm's running variance,
    so that its ``1 / sqrt(var + eps)`` is exactly 1."""
    one = torch.ones((), dtype=torch.float32)
    e = torch.tensor(eps, dtype=torch.float32)
    v = one - e
    for _ in range(64):
        s = v + e
        if bool(s == one):
            return float(v)
        v = torch.nextafter(v, torch.tensor(2.0) if bool(s < one) else torch.tensor(0.0))
    raise ValueError(f"no float32 variance folds BatchNorm eps={eps}")


DEAD_VARIANCE = 1e-4
"""A BatchNorm channel whose running variance is at most this fraction of ``eps`` is taken to
read a constant input (a dead channel; a live one that small would be amplified 100-fold by
``1 / sqrt(var + eps)`` on a signal of std below 1% of ``sqrt(eps)``)."""


def foldable(m: nn.Module) -> bool:
    """A BatchNorm whose eval forward is a per-channel affine map it can store as weight/bias."""
    return (isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine
            and m.track_running_stats and m.running_mean is not None)


def is_folded(m: nn.Module) -> bool:
    """Whether a foldable BatchNorm already holds a folded map (mean 0, variance + eps == 1)."""
    if not foldable(m):
        return False
    v = torch.tensor(unit_variance(m.eps), dtype=m.running_var.dtype)
    return bool((m.running_mean == 0).all()) and bool((m.running_var == v).all())


@torch.no_grad()
def fold_batchnorm(m: nn.Module, bits: int) -> None:
    """Fold a foldable BatchNorm's running statistics into its weight and bias (quantized to
    ``bits``), in place: its eval output is unchanged up to that quantization."""
    if is_folded(m):
        m.weight.copy_(quantize(m.weight, bits))
        m.bias.copy_(quantize(m.bias, bits))
        return
    inv = torch.rsqrt(m.running_var.double() + m.eps)
    a = m.weight.double() * inv
    b = m.bias.double() - m.running_mean.double() * a
    # A channel whose input is a constant (its producer's weights all zero, as sparsity makes
    # them) has a running variance decayed to ~0, so 1 / sqrt(var + eps) ~ 316: one such scale
    # would set the grid of the whole tensor and round every other channel's scale to 0. Its
    # input equals its running mean, so its output is the shift alone: stored as scale 0.
    dead = m.running_var.double() <= DEAD_VARIANCE * m.eps
    a = torch.where(dead, torch.zeros_like(a), a)
    b = torch.where(dead, m.bias.double(), b)
    # A live channel of tiny variance (a nearly dead producer) has a scale up to
    # 1 / sqrt(eps) times the others' and would coarsen everyone's grid the same way: the grid
    # follows the values within OUTLIER times the median, and an outlier takes more integer
    # levels instead (the file takes integers of up to 16 bits on a grid, float32 beyond).
    m.weight.copy_(quantize_on(a.float(), bits, robust_magnitude(a.float())))
    m.bias.copy_(quantize_on(b.float(), bits, robust_magnitude(b.float())))
    m.running_mean.zero_()
    m.running_var.fill_(unit_variance(m.eps))


@torch.no_grad()
def quantize_side_state(net: nn.Module, bits: int, skip: set[str]) -> nn.Module:
    """Fold every foldable BatchNorm of ``net`` and quantize every other float parameter and
    buffer to ``bits``, except the state keys in ``skip`` (the entropy-coded weights); in place.
    Returns ``net``. ``bits = 0`` leaves ``net`` unchanged."""
    if not bits:
        return net
    done: set[str] = set()
    for name, m in net.named_modules():
        if foldable(m):
            fold_batchnorm(m, bits)
            prefix = f"{name}." if name else ""
            done |= {prefix + k for k in ("weight", "bias", "running_mean", "running_var")}
    for key, t in net.state_dict(keep_vars=True).items():
        if key in skip or key in done or not t.is_floating_point():
            continue
        t.data.copy_(quantize(t.data, bits))
    return net
