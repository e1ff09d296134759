"""Entropy coding of integer symbols with constriction's ANS coder.

The coder only ever sees integer symbols and integer frequency tables (the float probability
model is turned into tables once, by :meth:`lilnetx.core.entropy.FactorizedPrior.quantized_tables`).
Encoder and decoder build the same ``Categorical`` from the same stored integers, so decoding
does not depend on repeating a float computation of the training code.
"""

from __future__ import annotations

import constriction
import numpy as np

from lilnetx.errors import FormatError

TABLE_PRECISION = 16
"""Frequencies of one table sum to exactly ``2**TABLE_PRECISION``."""


def _model(freqs: np.ndarray):
    probs = freqs.astype(np.float64) / float(1 << TABLE_PRECISION)
    return constriction.stream.model.Categorical(probs, perfect=False)


def _check(symbols: np.ndarray, lo: int, freqs: np.ndarray) -> np.ndarray:
    idx = np.asarray(symbols, dtype=np.int64) - lo
    if idx.size and (idx.min() < 0 or idx.max() >= len(freqs)):
        raise FormatError("a symbol lies outside its probability table's range")
    return idx.astype(np.int32)


def encode(segments: list[tuple[np.ndarray, int, np.ndarray]]) -> np.ndarray:
    """ANS-encode several segments into one stream of uint32 words (4 bytes each).

    Each segment is ``(symbols, lo, freqs)``: 1-D integer symbols whose values lie in
    ``[lo, lo + len(freqs))``, coded with the frequency table ``freqs``. A one-symbol table
    carries no information and adds nothing. Segment lengths are not stored in the stream.
    """
    coder = constriction.stream.stack.AnsCoder()
    for symbols, lo, freqs in reversed(segments):  # a stack: the last segment goes in first
        if len(freqs) > 1 and len(symbols):
            coder.encode_reverse(_check(symbols, lo, freqs), _model(freqs))
    return np.asarray(coder.get_compressed(), dtype=np.uint32)


def decode(words: np.ndarray, segments: list[tuple[int, int, np.ndarray]]) -> list[np.ndarray]:
    """Inverse of :func:`encode`: ``segments`` are ``(count, lo, freqs)``; int64 arrays back.

    Raises ``ValueError`` when the stream does not hold exactly these segments.
    """
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    out = []
    for count, lo, freqs in segments:
        if len(freqs) == 1 or count == 0:
            out.append(np.full(count, lo, dtype=np.int64))
            continue
        idx = coder.decode(_model(freqs), count)
        out.append(idx.astype(np.int64) + lo)
    if not coder.is_empty():
        raise FormatError("the stream holds more data than the index describes")
    return out


def information_bits(symbols: np.ndarray, lo: int, freqs: np.ndarray) -> float:
    """Information content of ``symbols`` under the table, in **bits** (the coding lower bound)."""
    if len(freqs) == 1 or symbols.size == 0:
        return 0.0
    counts = np.bincount(np.asarray(symbols, dtype=np.int64) - lo, minlength=len(freqs))
    p = freqs.astype(np.float64) / float(1 << TABLE_PRECISION)
    nz = counts > 0
    return float(-(counts[nz] * np.log2(p[nz])).sum())


def empirical_table(symbols: np.ndarray) -> tuple[int, np.ndarray]:
    """(lowest symbol, frequency table) of the empirical histogram of integer ``symbols``:
    every symbol from the lowest to the highest present gets a frequency of at least 1 and the
    table sums to ``2**TABLE_PRECISION`` (what a file stores for integers coded under their own
    histogram, as the quant and imp baselines are)."""
    from lilnetx.core.entropy import _quantize_pmf

    flat = np.asarray(symbols, dtype=np.int64).reshape(-1)
    lo, hi = int(flat.min()), int(flat.max())
    counts = np.bincount(flat - lo, minlength=hi - lo + 1).astype(np.float64)
    return lo, _quantize_pmf(counts / counts.sum(), 1 << TABLE_PRECISION)
