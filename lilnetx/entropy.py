"""Learned factorized probability model of integer latents (Balle et al. 2018, LilNetX sec. 3).

One :class:`FactorizedPrior` serves a whole group of layers (for example every 3x3 conv). It holds
one monotone CDF per *channel*, a channel being a kernel position (9 for a 3x3 group, 1 for a
dense or 1x1 group). The probability of an integer latent ``w`` in channel ``c`` is
``c(w + 1/2) - c(w - 1/2)``; its rate is ``-log2`` of that, in **bits**.

The differentiable model lives here; turning it into integer frequency tables for the byte coder
is :func:`FactorizedPrior.quantized_tables`, and the coder itself is :mod:`lilnetx.codec`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.clamp_min(LIKELIHOOD_FLOOR)

    def bits(self, x: torch.Tensor) -> torch.Tensor:
        """Total self-information of ``x`` ((channels, N)) in **bits**, a scalar tensor."""
        return -torch.log2(self.likelihood(x)).sum()

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
                raise ValueError(f"symbol range {n} too wide for {precision}-bit tables")
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
