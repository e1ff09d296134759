"""The training rate from a table: the prior evaluated on a grid, not at every latent.

The rate of a noisy latent ``x`` in channel ``c`` is ``f_c(x) = -log2(F_c(x + 1/2) -
F_c(x - 1/2))``, a smooth function of one scalar per channel. Instead of running the density
network at ``x +- 1/2`` for each of millions of latents (about 60 elementwise passes' worth of
work per latent), :func:`table_bits` evaluates ``f_c`` on ``points`` equally spaced values
spanning each channel's latents, once per step, and interpolates linearly:

- the total is ``sum_j W_cj f_c(t_cj)``, where ``W_cj`` is the sum of the interpolation weights
  that the latents put on grid point ``j`` (scatter-added);
- the gradient to a latent is the exact derivative ``f'`` at the two ends of its grid cell
  (computed on the grid), interpolated the same way;
- the gradients to the prior's parameters are those of the weighted grid sum, from the fused
  pass of :mod:`lilnetx.core.entropy` with the weights ``W``.

Per latent this is about ten elementwise passes (locate, split, scatter-add, gather). The error
is that of linear interpolation, ``h^2 / 8 max|f''|`` per latent for the value and
``h^2 / 8 max|f'''|`` for the gradient: with 8,192 points over a span of 100 latent units, ``h`` is 0.012.
``tests/test_rate_table.py`` checks the stated tolerances against the exact path
(:meth:`FactorizedPrior.bits` with ``exact=True``) on fresh and on trained priors.
"""

from __future__ import annotations

import torch

DEFAULT_POINTS = 8192
"""Grid points per channel (the table of a 3x3 group is 9 x 8,192 values). 4,096 left the
relative error of the bits of a trained LeNet-5's dense group at 9.6e-5, next to the 1e-4
tolerance; 8,192 divides the interpolation error by four."""
MAX_POINTS = 1 << 20

_MIN_STEP = 1e-6


def _grid_weights(x: torch.Tensor, points: int):
    """Grid (channels, points), cell index and position in the cell (channels, N) and the
    summed interpolation weights (channels, points) of the values ``x`` (channels, N)."""
    # amin and amax, not aminmax: on the CPU (torch 2.14) aminmax over rows is 20-40x slower
    # (10 ms against 0.2 ms for 4M float32 values, measured)
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    step = ((hi - lo) / (points - 1)).clamp_min_(_MIN_STEP)
    grid = torch.arange(points, device=x.device, dtype=x.dtype).mul(step).add_(lo)
    inv = step.reciprocal()
    frac = torch.addcmul(-lo * inv, x, inv)  # position on the grid, >= 0
    # truncation is the floor here; a NaN or infinite latent gives some integer that the clamp
    # makes a valid index, and its NaN weights make the bits NaN (the training loop's
    # divergence check sees it)
    idx = frac.long().clamp_(0, points - 2)
    frac.sub_(idx)  # position inside the cell, in [0, 1]
    right = torch.zeros(grid.shape, dtype=x.dtype, device=x.device).scatter_add_(1, idx, frac)
    count = torch.zeros(grid.shape, dtype=x.dtype, device=x.device)
    count.scatter_add_(1, idx, torch.ones((), dtype=x.dtype, device=x.device).expand_as(frac))
    weights = count.sub_(right)  # the left end of each cell gets 1 - frac
    weights[:, 1:].add_(right[:, :-1])  # the right end gets frac
    return grid, idx, frac, weights


def table_bits(x: torch.Tensor, sp: list[torch.Tensor], b: list[torch.Tensor],
               tf: list[torch.Tensor], points: int = DEFAULT_POINTS) -> torch.Tensor:
    """Total rate in **bits** (scalar tensor) of the values ``x`` (channels, N) under the prior
    with parameters ``sp`` (softplus of the matrices), ``b`` and ``tf`` (tanh of the factors),
    by linear interpolation in a ``points``-point table per channel; differentiable to ``x``
    and to the parameters."""
    if points < 2:
        raise ValueError(f"a rate table needs at least 2 points, got {points}")
    if x.numel() == 0:
        return x.sum() * 0
    return _TableBits.apply(x, len(sp), points, *sp, *b, *tf)


class _TableBits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n_layers, points, *params):
        from lilnetx.core.entropy import _bits_and_grads

        sp = list(params[:n_layers])
        b = list(params[n_layers:2 * n_layers])
        tf = list(params[2 * n_layers:])
        grid, idx, frac, weights = _grid_weights(x.detach(), points)
        need = ctx.needs_input_grad
        want_params = any(need[3:])
        bits, grads = _bits_and_grads(grid, sp, b, tf, need_grad=want_params or need[0],
                                      weights=weights)
        saved = []
        if need[0]:
            # the exact derivative at the grid points (the pass returns it times the weight;
            # a point of weight 0 is used by no latent, or with a factor 0), interpolated like
            # the value: a difference of neighbouring values would lose float32 digits to
            # cancellation on a fine grid
            used = weights > 0
            slope = torch.where(used, grads[0] / torch.where(used, weights, 1.0), 0.0)
            rise = slope[:, 1:] - slope[:, :-1]
            saved.append(torch.addcmul(slope.gather(1, idx), rise.gather(1, idx), frac))
        ctx.has_x = bool(need[0])
        ctx.has_params = want_params
        saved.extend(grads[1:] if want_params else [])
        ctx.save_for_backward(*saved)
        return bits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        gx = saved.pop(0) * grad_out if ctx.has_x else None
        n = len(ctx.needs_input_grad) - 3
        if ctx.has_params:
            pg = [g * grad_out if ctx.needs_input_grad[i + 3] else None
                  for i, g in enumerate(saved)]
        else:
            pg = [None] * n
        return (gx, None, None, *pg)
