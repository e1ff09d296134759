"""Uniform quantization of a plain network's conv and linear weights, for the ``quant`` and
``imp`` baselines, stored by the same ``.lnx`` codec as LilNetX models.

Each layer's weight becomes integers ``q = round(w / s)`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
with one float32 scale ``s = max|w| / (2^(b-1) - 1)`` per layer (symmetric, per tensor); an
exact zero (a pruned weight) stays zero. In the file each layer is a group of its own whose
"decoder" is the scale, coded under the empirical histogram of its integers, so the
entropy-coded zeros are the sparsity pattern.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lilnetx.core.latent import decode_exact
from lilnetx.errors import ConfigError
from lilnetx.fileformat import codec
from lilnetx.layers import convertible_layers

MIN_BITS, MAX_BITS = 2, 12


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], but got {bits!r}")
    return bits


def quantize_layers(net: nn.Module, bits: int) -> dict[str, tuple[np.ndarray, np.float32]]:
    """Per conv/linear layer name: (int64 symbols, shape (numel, 1); float32 scale)."""
    check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    out = {}
    for name, layer in convertible_layers(net):
        w = layer.weight.detach().cpu().double()
        m = float(w.abs().max())
        scale = np.float32(m / qmax if m > 0 else 1.0)
        q = torch.round(w / float(scale)).clamp_(-qmax, qmax).to(torch.int64)
        out[name] = (q.reshape(-1, 1).numpy(), scale)
    return out


def apply_quantization(net: nn.Module, q: dict[str, tuple[np.ndarray, np.float32]]) -> nn.Module:
    """Set each quantized layer's weight to its decoded value (the same function the file
    decoder uses, so a quantized network and its file agree bit for bit)."""
    layers = dict(convertible_layers(net))
    with torch.no_grad():
        for name, (sym, scale) in q.items():
            w = layers[name].weight
            w.copy_(decode_exact(torch.from_numpy(sym), torch.tensor([[scale]]),
                                 tuple(w.shape)).to(w.device))
    return net


def tables_for(q: dict[str, tuple[np.ndarray, np.float32]]) -> dict[str, tuple[int, np.ndarray]]:
    """Per layer: (lowest symbol, frequency table of the empirical histogram)."""
    return {name: codec.empirical_table(sym) for name, (sym, _) in q.items()}


def information_bits(q: dict[str, tuple[np.ndarray, np.float32]]) -> float:
    """Information content of all quantized weights under their stored tables, in bits."""
    tabs = tables_for(q)
    return float(sum(codec.information_bits(sym[:, 0], *tabs[name])
                     for name, (sym, _) in q.items()))
