"""Probability tables of the compact format (version 2), each described by a few stored
integers and rebuilt by integer arithmetic alone, so that encoder and decoder hold bit-identical
tables on any machine.

A table covers the symbols ``lo .. lo + n - 1`` and sums to ``2**TABLE_PRECISION``; every symbol
in range gets a frequency of at least 1. Two kinds:

- ``GEOMETRIC``: a two-sided geometric (discrete Laplace) shape around a ``center`` with ratio
  ``theta / 256`` per step: two integers. Latents and quantized side tensors are close to it.
- ``COUNTS``: the symbols' exact histogram (``n - 1`` counts; the last follows from the number of
  symbols, which the architecture fixes): the empirical distribution, at the cost of its counts.

:func:`choose` picks, for given symbols, the description with the fewest total bits (its own
bytes plus the symbols' information content under it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lilnetx.errors import FormatError
from lilnetx.fileformat.binary import Reader, Writer
from lilnetx.fileformat.codec import TABLE_PRECISION

GEOMETRIC, COUNTS = 0, 1
MAX_SYMBOLS = 1 << (TABLE_PRECISION - 1)
"""Most symbols one table may cover."""
MAX_GEOMETRIC_SPAN = 4096
"""A geometric table covers at most this many symbols (its weights vanish well before)."""
_TOP = 1 << 24
_THETAS = np.arange(1, 256, dtype=np.int64)


def normalize(weights: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to ``2**TABLE_PRECISION``: 1 each plus a share of the rest in
    proportion to the non-negative integer ``weights`` (rows of a 2-D array each), the remainder
    to the first largest weight. Integer arithmetic only."""
    w = np.asarray(weights, dtype=np.int64)
    total = 1 << TABLE_PRECISION
    n = w.shape[-1]
    rest = total - n
    s = w.sum(axis=-1, keepdims=True)
    f = 1 + (w * rest) // np.maximum(s, 1)
    top = np.argmax(w, axis=-1)
    left = total - f.sum(axis=-1)
    if w.ndim == 1:
        f[top] += left
    else:
        f[np.arange(w.shape[0]), top] += left
    return f


def _geometric_weights(thetas: np.ndarray, span: int) -> np.ndarray:
    """(len(thetas), span) weights ``w[d]``: ``2**24`` at ``d = 0``, then ``w * theta >> 8``."""
    out = np.empty((len(thetas), span), dtype=np.int64)
    out[:, 0] = _TOP
    for d in range(1, span):
        out[:, d] = (out[:, d - 1] * thetas) >> 8
    return out


def geometric_table(n: int, center: int, theta: int) -> np.ndarray:
    d = np.abs(np.arange(n) - center)
    return normalize(_geometric_weights(np.asarray([theta], dtype=np.int64), int(d.max()) + 1)
                     [0, d])


@dataclass
class TableSpec:
    """How one table is described: symbols ``lo .. lo + n - 1``, its kind and parameters."""

    lo: int
    n: int
    kind: int = GEOMETRIC
    center: int = 0
    theta: int = 1
    counts: np.ndarray | None = None
    info_bits: float = 0.0  # information content of the symbols chosen for, in bits

    def freqs(self) -> np.ndarray:
        if self.n == 1:
            return np.asarray([1 << TABLE_PRECISION], dtype=np.int64)
        if self.kind == GEOMETRIC:
            return geometric_table(self.n, self.center, self.theta)
        return normalize(self.counts)

    def write(self, w: Writer) -> None:
        w.sint(self.lo).uint(self.n - 1)
        if self.n == 1:
            return
        w.byte(self.kind)
        if self.kind == GEOMETRIC:
            w.uint(self.center).byte(self.theta)
        else:
            for c in self.counts[:-1]:
                w.uint(int(c))

    def size_bits(self) -> int:
        w = Writer()
        self.write(w)
        return 8 * len(w.buf)


def _bits(counts: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Information content (bits) of symbols with histogram ``counts`` under ``freqs`` (rows)."""
    logp = np.log2(freqs.astype(np.float64)) - TABLE_PRECISION
    return -(logp * counts).sum(axis=-1)


def choose(symbols: np.ndarray) -> TableSpec:
    """The description of the fewest total bits for the integer ``symbols`` (1-D, not empty).

    Raises :class:`FormatError` when they span more than :data:`MAX_SYMBOLS` integers."""
    flat = np.asarray(symbols, dtype=np.int64).reshape(-1)
    lo, hi = int(flat.min()), int(flat.max())
    n = hi - lo + 1
    if n > MAX_SYMBOLS:
        raise FormatError(f"integers spanning {n} values, too wide for {TABLE_PRECISION}-bit "
                          f"tables (at most {MAX_SYMBOLS})")
    if n == 1:
        return TableSpec(lo, 1)
    counts = np.bincount(flat - lo, minlength=n)
    best = TableSpec(lo, n, COUNTS, counts=counts, info_bits=float(_bits(counts, normalize(counts))))
    best_cost = best.size_bits() + best.info_bits
    if n <= MAX_GEOMETRIC_SPAN:
        center = int(np.argmax(counts))
        d = np.abs(np.arange(n) - center)
        tabs = normalize(_geometric_weights(_THETAS, int(d.max()) + 1)[:, d])
        bits = _bits(counts, tabs)
        k = int(np.argmin(bits))
        geo = TableSpec(lo, n, GEOMETRIC, center, int(_THETAS[k]), info_bits=float(bits[k]))
        if geo.size_bits() + geo.info_bits < best_cost:
            best = geo
    return best


def read_spec(r: Reader, count: int, what: str) -> TableSpec:
    """Read a :meth:`TableSpec.write` for ``count`` symbols (their number, fixed by the
    architecture), checking every value before a table is built."""
    lo = r.sint(f"{what} lowest symbol", -(1 << 31), 1 << 31)
    n = r.uint(f"{what} symbol count", MAX_SYMBOLS - 1) + 1
    if n == 1:
        return TableSpec(lo, 1)
    kind = r.byte(f"{what} table kind")
    if kind == GEOMETRIC:
        if n > MAX_GEOMETRIC_SPAN:
            raise FormatError(f"index section: {what} geometric table of {n} symbols")
        center = r.uint(f"{what} table center", n - 1)
        theta = r.byte(f"{what} table ratio")
        if theta == 0:
            raise FormatError(f"index section: {what} table ratio is 0")
        return TableSpec(lo, n, GEOMETRIC, center, theta)
    if kind != COUNTS:
        raise FormatError(f"index section: {what} has unknown table kind {kind}")
    counts = np.empty(n, dtype=np.int64)
    left = count
    for i in range(n - 1):
        counts[i] = r.uint(f"{what} count", left)
        left -= int(counts[i])
    counts[-1] = left
    return TableSpec(lo, n, COUNTS, counts=counts)
