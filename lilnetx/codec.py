"""Entropy coding of integer symbols with constriction's ANS coder.

The coder only ever sees integer symbols and integer frequency tables (the float probability
model is turned into tables once, by :meth:`lilnetx.entropy.FactorizedPrior.quantized_tables`).
Encoder and decoder build the same ``Categorical`` from the same stored integers, so decoding
does not depend on repeating a float computation of the training code.
"""

from __future__ import annotations

import constriction
import numpy as np

TABLE_PRECISION = 16
"""Frequencies of one table sum to exactly ``2**TABLE_PRECISION``."""


def _model(freqs: np.ndarray):
    probs = freqs.astype(np.float64) / float(1 << TABLE_PRECISION)
    return constriction.stream.model.Categorical(probs, perfect=False)


def encode(symbols: np.ndarray, lo: int, freqs: np.ndarray) -> np.ndarray:
    """ANS-encode integer ``symbols`` (1-D) whose values lie in ``[lo, lo + len(freqs))``.

    Returns the compressed stream as uint32 words (4 bytes each). A one-symbol table carries no
    information and encodes to zero words. The number of symbols is not stored in the stream.
    """
    if len(freqs) == 1:
        return np.zeros(0, dtype=np.uint32)
    idx = (np.asarray(symbols, dtype=np.int64) - lo).astype(np.int32)
    if idx.size and (idx.min() < 0 or idx.max() >= len(freqs)):
        raise ValueError("symbol outside the table's range")
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(idx, _model(freqs))
    return np.asarray(coder.get_compressed(), dtype=np.uint32)


def decode(words: np.ndarray, count: int, lo: int, freqs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: ``count`` int64 symbols from uint32 ``words``."""
    if len(freqs) == 1:
        return np.full(count, lo, dtype=np.int64)
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    idx = coder.decode(_model(freqs), count)
    return idx.astype(np.int64) + lo


def information_bits(symbols: np.ndarray, lo: int, freqs: np.ndarray) -> float:
    """Information content of ``symbols`` under the table, in **bits** (the coding lower bound)."""
    if len(freqs) == 1 or symbols.size == 0:
        return 0.0
    counts = np.bincount(np.asarray(symbols, dtype=np.int64) - lo, minlength=len(freqs))
    p = freqs.astype(np.float64) / float(1 << TABLE_PRECISION)
    nz = counts > 0
    return float(-(counts[nz] * np.log2(p[nz])).sum())
