"""Learned factorized probability model of integer latents (Balle et al. 2018, LilNetX sec. 3).

One :class:`FactorizedPrior` serves a whole group of layers (for example every 3x3 conv). It holds
one monotone CDF per *channel*, a channel being a kernel position (9 for a 3x3 group, 1 for a
dense or 1x1 group). The probability of an integer latent ``w`` in channel ``c`` is
``c(w + 1/2) - c(w - 1/2)``; its rate is ``-log2`` of that, in **bits**.

The differentiable model lives here; turning it into integer frequency tables for the byte coder
is :func:`FactorizedPrior.quantized_tables`, and the coder itself is :mod:`lilnetx.fileformat.codec`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lilnetx.errors import FormatError

LIKELIHOOD_FLOOR = 1e-9
"""Smallest probability the rate term uses, so a rare latent costs at most ~29.9 bits."""


class FactorizedPrior(nn.Module):
    """Fully factorized density with ``channels`` independent learned CDFs.

    Args:
        channels: number of independent CDFs (kernel positions of the group).
        filters: hidden widths of the monotone network (Balle et al. use ``(3, 3, 3)``).
        init_scale: initial spread of the density, in latent units.

    The network maps a scalar ``x`` through affine layers with softplus-positive matrices and
    ``x + tanh(a) * tanh(x)`` nonlinearities, then a sigmoid; every step is monotone in ``x``.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        dims = (1, *self.filters, 1)
        scale = init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid CDF values. ``x``: (channels, N) -> (channels, N)."""
        h = x.unsqueeze(1)
        last = len(self.matrices) - 1
        for i, (m, b) in enumerate(zip(self.matrices, self.biases, strict=True)):
            h = torch.baddbmm(b, F.softplus(m), h)
            if i < last:
                h = h + torch.tanh(self.factors[i]) * torch.tanh(h)
        return h.squeeze(1)

    def likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each value.

        ``x``: (channels, N) latent values (integers at evaluation, noisy in training).
        Returns (channels, N) probabilities in (0, 1], floored at :data:`LIKELIHOOD_FLOOR`.
        Both interval ends go through the network in one batched call.
        """
        n = x.shape[1]
        both = self.logits_cdf(torch.cat((x - 0.5, x + 0.5), dim=1))
        lower, upper = both[:, :n], both[:, n:]
        # Evaluate in the tail where the sigmoid is not saturated (flip sign when above the median).
        # (at the exact median both choices are equal; sign() would give 0 and lose the mass)
        sign = torch.where((lower + upper).detach() > 0, -1.0, 1.0).to(lower.dtype)
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.clamp_min(LIKELIHOOD_FLOOR)

    def bits(self, x: torch.Tensor, table: int | None = None) -> torch.Tensor:
        """Total self-information of ``x`` ((channels, N)) in **bits**, a scalar tensor.

        ``table=None`` (exact): ``-log2(self.likelihood(x)).sum()`` with the same gradients (to
        ``x`` and to the parameters), computed by :class:`_FusedBits`: a hand-written forward
        and backward pass over cache-sized chunks instead of a large autograd graph.
        ``table=P``: interpolated in a ``P``-point table per channel
        (:func:`lilnetx.core.rate_table.table_bits`; the training rate, within the tolerances
        stated there) when the channels hold at least ``2 P`` values each; fewer are evaluated
        exactly, which then costs less than the grid. :meth:`rows_bits` takes the values in
        the layers' ``(N, channels)`` layout, which the table processes fastest.
        """
        return self.rows_bits(x.t(), table)

    def rows_bits(self, rows: torch.Tensor, table: int | None = None) -> torch.Tensor:
        """:meth:`bits` of the values ``rows`` given as ``(N, channels)`` (one row per latent
        slice, as the latent layers store them), in **bits**."""
        sp = [F.softplus(m) for m in self.matrices]
        tf = [torch.tanh(f) for f in self.factors]
        if table is not None and rows.shape[0] >= 2 * table:
            from lilnetx.core.rate_table import table_bits

            return table_bits(rows, sp, list(self.biases), tf, points=table)
        x = rows.t()
        params = (*sp, *self.biases, *tf)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _FusedBits.apply(x, len(sp), *params)
        return _bits_and_grads(x, sp, list(self.biases), tf, need_grad=False)[0]

    @torch.no_grad()
    def quantized_tables(
        self, lo: np.ndarray, hi: np.ndarray, precision: int = 16
    ) -> list[np.ndarray]:
        """Integer frequency tables for the byte coder, one per channel.

        Args:
            lo, hi: (channels,) smallest and largest integer symbol present per channel.
            precision: the frequencies of a channel sum to exactly ``2**precision``.

        Returns a list of ``channels`` uint32 arrays of length ``hi[c] - lo[c] + 1``; every
        symbol in range gets frequency >= 1, so any latent in range stays encodable. The tables
        are what the file stores: decoding never re-runs this float computation.
        """
        device = self.matrices[0].device
        tables = []
        total = 1 << precision
        for c in range(self.channels):
            lo_c, hi_c = int(lo[c]), int(hi[c])
            n = hi_c - lo_c + 1
            if n > total // 2:
                raise FormatError(f"latents of channel {c} span {n} integers, too wide for "
                                  f"{precision}-bit probability tables (at most {total // 2})")
            grid = torch.arange(lo_c, hi_c + 1, device=device, dtype=torch.float32)
            x = torch.zeros(self.channels, n, device=device)
            x[c] = grid
            p = self.likelihood(x)[c].double().cpu().numpy()
            tables.append(_quantize_pmf(p, total))
        return tables


def _quantize_pmf(p: np.ndarray, total: int) -> np.ndarray:
    """Integer frequencies >= 1 summing to ``total``, close to ``p`` (largest-remainder method)."""
    n = p.size
    p = np.maximum(p, 0) + 1e-12
    p = p / p.sum()
    spare = total - n
    raw = p * spare
    freq = np.floor(raw).astype(np.int64)
    rest = spare - int(freq.sum())
    if rest > 0:
        order = np.argsort(-(raw - freq), kind="stable")
        freq[order[:rest]] += 1
    freq += 1
    return freq.astype(np.uint32)


_CHUNK = 32768
"""Latent values per chunk of the fused rate pass on the CPU: a hidden activation of a chunk is
768 KB, so a chunk's temporaries stay in cache, and each op still has enough work to use several
threads (chunk sizes 4096 to 262144 and no chunking measured in ``benchmarks/``)."""


def _affine(bias: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``bias + w @ h`` for a (C, out, k) matrix ``w`` and (C, k, m) values ``h``."""
    return torch.addcmul(bias, w, h) if w.shape[2] == 1 else torch.baddbmm(bias, w, h)


def _back(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``w^T @ g`` for a (C, out, k) matrix ``w`` and (C, out, m) gradients ``g``."""
    wt = w.transpose(1, 2)
    return wt * g if w.shape[1] == 1 else torch.bmm(wt, g)


def _bits_and_grads(
    x: torch.Tensor, sp: list[torch.Tensor], b: list[torch.Tensor], tf: list[torch.Tensor],
    need_grad: bool, weights: torch.Tensor | None = None, chunk: int = _CHUNK,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``-log2(likelihood(x)).sum()`` and, if ``need_grad``, its gradients, in one pass.

    Args:
        x: (channels, N) values; sp: ``softplus(matrices)``; b: biases; tf: ``tanh(factors)``.
        weights: optional (channels, N) weight of each value in the sum (and its gradients).
        chunk: values per chunk on the CPU (all channels together).

    Returns ``(bits, grads)`` with ``grads = [d/dx, *d/dsp, *d/db, *d/dtf]`` (or ``None``).
    The same function as :meth:`FactorizedPrior.likelihood`, differentiated by hand and evaluated
    chunk by chunk on the CPU (forward and backward of a chunk together, no autograd graph, the
    temporaries in cache). Two rewrites, exact in real arithmetic, save most of the elementwise
    passes: ``tanh(z) = 2 sigmoid(2z) - 1`` (a sigmoid is several times cheaper than a tanh on
    CPUs), and the hidden layers carry the doubled values ``2z`` and ``2h`` so every factor of 2
    folds into the small parameter tensors.
    """
    hidden = len(sp) - 1
    channels, total = x.shape
    # Doubled network: Y_i = 2 z_i, G_i = 2 h_i = Y_i - 2 tf_i + 4 tf_i sigmoid(Y_i).
    last_scale = 0.5 if hidden else 1.0
    w = ([sp[0] * 2] if hidden else []) + list(sp[1:hidden]) + [sp[-1] * last_scale]
    # a handful of _foreach kernels for the small parameter tensors (op count matters here:
    # a LeNet-5 step is ~8 ms)
    bias2 = (list(torch._foreach_mul(list(b[:hidden]), 2.0)) if hidden else []) + [b[-1]]
    ntf2 = list(torch._foreach_mul(list(tf), -2.0)) if tf else []
    tf4 = list(torch._foreach_mul(list(tf), 4.0)) if tf else []
    offsets = x.new_tensor([[-0.5], [0.5]])
    cols = max(1, chunk // max(channels, 1)) if x.device.type == "cpu" else max(total, 1)
    k = -1.0 / math.log(2.0)  # d bits = -d ln(p) / ln 2
    pcs = torch.empty((channels, total), dtype=x.dtype, device=x.device)
    gx = torch.empty_like(x) if need_grad else None
    grads: list[torch.Tensor] | None = None  # the first chunk's, then summed into
    for start in range(0, total, cols):
        xc = x[:, start:start + cols]
        n = xc.shape[1]
        pts = torch.empty((channels, 2, n), dtype=x.dtype, device=x.device)
        torch.add(xc.unsqueeze(1), offsets, out=pts)  # [x - 1/2, x + 1/2]
        h = pts.view(channels, 1, 2 * n)
        acts, sigs = [h], []
        for i in range(hidden):
            y = _affine(bias2[i], w[i], h)
            u = torch.sigmoid(y)
            h = y.add_(ntf2[i]).addcmul_(tf4[i], u)
            acts.append(h)
            sigs.append(u)
        logits = _affine(bias2[-1], w[-1], h).view(channels, 2, n)
        # As in likelihood(): evaluate in the tail where the sigmoid is not saturated.
        sign = torch.where(logits.sum(1, keepdim=True) > 0, -1.0, 1.0).to(logits.dtype)
        sg = (logits * sign).sigmoid_()
        diff = sg[:, 1] - sg[:, 0]
        p = diff.abs()
        pc = pcs[:, start:start + n]
        torch.clamp_min(p, LIKELIHOOD_FLOOR, out=pc)
        if gx is None:
            continue
        # d ln(pc) / d logits; clamp_min passes the gradient where p >= floor, abs via sign.
        q = torch.sign(diff).div_(pc).masked_fill_(p < LIKELIHOOD_FLOOR, 0)
        if weights is not None:
            q.mul_(weights[:, start:start + n])
        q = q.unsqueeze(1)
        g = sg.addcmul_(sg, sg, value=-1).mul_(q.mul_(sign))
        g[:, 0].neg_()
        g = g.view(channels, 1, 2 * n)
        d_sp, d_b, d_tf = [torch.bmm(g, h.transpose(1, 2))], [g.sum(-1, keepdim=True)], []
        gh = _back(w[-1], g)
        for i in reversed(range(hidden)):
            u = sigs[i]
            d_tf.append((torch.linalg.vecdot(gh, u) * 4 - gh.sum(-1) * 2).unsqueeze(-1))
            gy = gh.addcmul_(gh, u.addcmul_(u, u, value=-1).mul_(tf4[i]))  # 1 + 4tf u(1-u)
            d_b.append(gy.sum(-1, keepdim=True))
            d_sp.append(torch.bmm(gy, acts[i].transpose(1, 2)))
            gh = _back(w[i], gy)
        gx[:, start:start + n] = gh.view(channels, 2, n).sum(1).mul_(k)
        if grads is None:
            grads = d_sp[::-1] + d_b[::-1] + d_tf[::-1]
        else:
            torch._foreach_add_(grads, d_sp[::-1] + d_b[::-1] + d_tf[::-1])
    logs = pcs.log2()
    bits = (logs.mul_(weights) if weights is not None else logs).sum().neg_()
    if gx is None:
        return bits, None
    if grads is None:  # no values
        grads = [torch.zeros_like(t) for t in (*sp, *b, *tf)]
    scale = ([2.0 * k] if hidden else []) + [k] * max(hidden - 1, 0) + [last_scale * k]
    scale += [2.0 * k] * hidden + [k] + [k] * hidden
    torch._foreach_mul_(grads, scale)
    return bits, [gx, *grads]


class _FusedBits(torch.autograd.Function):
    """``bits`` of :class:`FactorizedPrior` with gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, x, n_layers, *params):
        sp, b, tf = params[:n_layers], params[n_layers:2 * n_layers], params[2 * n_layers:]
        bits, grads = _bits_and_grads(x, list(sp), list(b), list(tf), need_grad=True)
        ctx.save_for_backward(*grads)
        return bits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grads = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = grads[0] * grad_out if need[0] else None
        return (gx, None, *scaled_grads(grads[1:], need[2:], grad_out))


def scaled_grads(grads, need, grad_out: torch.Tensor) -> list[torch.Tensor | None]:
    """``g * grad_out`` for each ``g`` of ``grads`` whose ``need`` is set (else ``None``), in one
    ``_foreach`` kernel."""
    wanted = [g for g, n in zip(grads, need, strict=True) if n]
    scaled = iter(torch._foreach_mul(wanted, grad_out) if wanted else [])
    return [next(scaled) if n else None for n in need]
