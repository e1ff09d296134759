"""The training rate from a table: the prior evaluated on a grid, not at every latent.

The rate of a noisy latent ``x`` in channel ``c`` is ``f_c(x) = -log2(F_c(x + 1/2) -
F_c(x - 1/2))``, a smooth function of one scalar per channel. Instead of running the density
network at ``x +- 1/2`` for each of millions of latents (about 60 elementwise passes' worth of
work per latent), :func:`table_bits` evaluates ``f_c`` on ``points`` equally spaced values
spanning the group's latents, once per step, and interpolates linearly:

- the total is ``sum_j W_cj f_c(t_j)``, where ``W_cj`` is the sum of the interpolation weights
  that the latents of channel ``c`` put on grid point ``j`` (scatter-added);
- the gradient to a latent is the exact derivative ``f'`` at the two ends of its grid cell
  (computed on the grid), interpolated the same way;
- the gradients to the prior's parameters are those of the weighted grid sum, from the fused
  pass of :mod:`lilnetx.core.entropy` with the weights ``W``.

The values come as the layers store them, ``(N, channels)`` rows (a channel is a kernel
position), and are processed in that layout: one grid spans all channels of the group (one
whole-tensor ``aminmax``, not a strided reduction per channel), a latent's cell is an int32
index into the flattened ``(channels * points)`` table, and the two scatters and two gathers
per latent are one-dimensional. Per latent this is about eight elementwise passes' worth
(locate, count, scatter-add, two gathers, interpolate). The error is that of linear
interpolation, ``h^2 / 8 max|f''|`` per latent for the value and ``h^2 / 8 max|f'''|`` for the
gradient: with 8,192 points over a span of 100 latent units, ``h`` is 0.012.
``tests/test_rate_table.py`` checks the stated tolerances against the exact path
(:meth:`FactorizedPrior.bits` with ``table=None``) on fresh and on trained priors.
"""

from __future__ import annotations

import math

import torch

DEFAULT_POINTS = 8192
"""Grid points per channel (the table of a 3x3 group is 9 x 8,192 values). 4,096 left the
relative error of the bits of a trained LeNet-5's dense group at 9.6e-5, next to the 1e-4
tolerance; 8,192 divides the interpolation error by four."""
MAX_POINTS = 1 << 20

_MIN_STEP = 1e-6

FINEST_STEP = 1.0 / 512
"""On the CPU a grid is no finer than this (latent units): a group whose values span ``s``
units gets ``min(points, s / FINEST_STEP + 2)`` points, so a narrow span (a network early in
training) does not pay for 8,192 points it does not need. Measured on the dense group of a
LeNet-5 trained 12 epochs on Fashion-MNIST (``benchmarks/rate_table.py``): a step of 1/128 left
the relative error of the bits at 3.3e-4 and the lowest prior-gradient cosine at 0.99984, both
outside the tolerances; the error shrinks as the step squared, so 1/512 divides it by 16.
Elsewhere the grid keeps ``points``: its size would need the span on the host, a
synchronisation per step."""


def _grid_weights(rows: torch.Tensor, points: int):
    """Locate the values ``rows`` (N, channels) on one grid of ``points`` values spanning them.

    Returns the grid (channels, points) (every row the same), each value's cell as an int32
    index into the flattened (channels * points) table (N * channels,), its position in the
    cell in [0, 1] (N * channels,), and the summed interpolation weights (channels, points).
    """
    n, channels = rows.shape
    lo, hi = torch.aminmax(rows)  # one grid for the group: a whole-tensor reduction
    if rows.device.type == "cpu":
        span = float(hi - lo)  # no synchronisation on the CPU
        if math.isfinite(span):
            points = max(2, min(points, int(span / FINEST_STEP) + 2))
    step = ((hi - lo) / (points - 1)).clamp_min_(_MIN_STEP)
    inv = step.reciprocal()
    pos = torch.addcmul(-lo * inv, rows, inv)  # position on the grid, >= 0
    # int32 (int64 conversion and arithmetic are ~10x slower on the CPU); truncation is the
    # floor here; a NaN or infinite value gives some integer that the clamp makes a valid
    # index, and its NaN weights make the bits NaN (the training loop's divergence check
    # sees it)
    idx = pos.int().clamp_(0, points - 2)
    frac = pos.sub_(idx).reshape(-1)  # position inside the cell, in [0, 1]
    offsets = torch.arange(channels, dtype=torch.int32, device=rows.device).mul_(points)
    flat = idx.add_(offsets).reshape(-1)
    size = channels * points
    right = torch.zeros(size, dtype=rows.dtype, device=rows.device).index_add_(0, flat, frac)
    if rows.device.type == "cpu":
        count = torch.bincount(flat, minlength=size).to(rows.dtype)
    else:  # bincount sizes its output on the host (a synchronisation) on CUDA
        count = torch.zeros(size, dtype=rows.dtype, device=rows.device).index_add_(
            0, flat, torch.ones((), dtype=rows.dtype, device=rows.device).expand_as(frac))
    weights = count.sub_(right)  # the left end of each cell gets 1 - frac
    # the right end gets frac; a cell never starts at a channel's last point (idx <= points
    # - 2), so nothing crosses into the next channel
    weights[1:].add_(right[:-1])
    grid = torch.arange(points, device=rows.device, dtype=rows.dtype).mul_(step).add_(lo)
    return grid.expand(channels, points).contiguous(), flat, frac, weights.view(channels, points)


def table_bits(rows: torch.Tensor, sp: list[torch.Tensor], b: list[torch.Tensor],
               tf: list[torch.Tensor], points: int = DEFAULT_POINTS) -> torch.Tensor:
    """Total rate in **bits** (scalar tensor) of the values ``rows`` ((N, channels): one row per
    latent slice, a column per kernel position) under the prior with parameters ``sp``
    (softplus of the matrices), ``b`` and ``tf`` (tanh of the factors), by linear interpolation
    in a ``points``-point table per channel; differentiable to ``rows`` and to the
    parameters."""
    if points < 2:
        raise ValueError(f"a rate table needs at least 2 points, got {points}")
    if rows.numel() == 0:
        return rows.sum() * 0
    return _TableBits.apply(rows, len(sp), points, *sp, *b, *tf)


class _TableBits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, n_layers, points, *params):
        from lilnetx.core.entropy import _bits_and_grads

        sp = list(params[:n_layers])
        b = list(params[n_layers:2 * n_layers])
        tf = list(params[2 * n_layers:])
        grid, flat, frac, weights = _grid_weights(rows.detach(), points)
        need = ctx.needs_input_grad
        want_params = any(need[3:])
        # the grid in one chunk: it is small, and a chunk costs ~60 ops of fixed overhead
        bits, grads = _bits_and_grads(grid, sp, b, tf, need_grad=want_params or need[0],
                                      weights=weights, chunk=grid.numel())
        saved = []
        if need[0]:
            # the exact derivative at the grid points (the pass returns it times the weight;
            # a point of weight 0 is used by no latent, or with a factor 0), interpolated like
            # the value: a difference of neighbouring values would lose float32 digits to
            # cancellation on a fine grid
            used = weights > 0
            slope = torch.where(used, grads[0] / torch.where(used, weights, 1.0), 0.0)
            slope = slope.reshape(-1)
            rise = torch.diff(slope, append=slope[-1:])
            gx = torch.addcmul(slope.index_select(0, flat), rise.index_select(0, flat), frac)
            saved.append(gx.view(rows.shape))
        ctx.has_x = bool(need[0])
        ctx.has_params = want_params
        saved.extend(grads[1:] if want_params else [])
        ctx.save_for_backward(*saved)
        return bits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from lilnetx.core.entropy import scaled_grads

        saved = list(ctx.saved_tensors)
        gx = saved.pop(0) * grad_out if ctx.has_x else None
        n = len(ctx.needs_input_grad) - 3
        pg = (scaled_grads(saved, ctx.needs_input_grad[3:], grad_out) if ctx.has_params
              else [None] * n)
        return (gx, None, None, *pg)
