"""Tests of lilnetx.fileformat.codec: ANS coding of integer symbols under stored integer frequency tables."""

from __future__ import annotations

import numpy as np
import pytest

from lilnetx.core.entropy import _quantize_pmf
from lilnetx.errors import FormatError
from lilnetx.fileformat import codec

TOTAL = 1 << codec.TABLE_PRECISION


def _table(rng: np.random.Generator, n: int, peaked: bool = False) -> np.ndarray:
    if peaked:  # a discretized Laplacian, like trained latents
        x = np.arange(n) - n // 2
        p = np.exp(-np.abs(x) / max(n / 8, 0.5))
    else:
        p = rng.random(n)
    t = _quantize_pmf(p, TOTAL)
    assert t.dtype == np.uint32 and int(t.sum()) == TOTAL and t.min() >= 1
    return t


def _sample(rng: np.random.Generator, table: np.ndarray, lo: int, count: int) -> np.ndarray:
    p = table.astype(np.float64) / TOTAL
    return rng.choice(len(table), size=count, p=p).astype(np.int64) + lo


def _segments(seed: int):
    rng = np.random.default_rng(seed)
    segs = []
    for lo, n, count, peaked in [(-3, 7, 100, False), (0, 1, 50, False), (-40, 81, 2000, True),
                                  (5, 2, 0, False), (-1, 3, 1, False), (0, 1, 0, False),
                                  (-200, 401, 500, True), (7, 1, 13, False), (0, 2, 777, False)]:
        t = _table(rng, n, peaked)
        segs.append((_sample(rng, t, lo, count), lo, t))
    return segs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_of_several_segments(seed):
    segs = _segments(seed)
    words = codec.encode(segs)
    assert words.dtype == np.uint32
    out = codec.decode(words, [(len(s), lo, t) for s, lo, t in segs])
    assert len(out) == len(segs)
    for (s, _, _), got in zip(segs, out, strict=True):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, s)
    # the stream survives a trip through little-endian bytes (what the file stores)
    back = np.frombuffer(words.astype("<u4").tobytes(), dtype="<u4")
    out2 = codec.decode(back, [(len(s), lo, t) for s, lo, t in segs])
    for (s, _, _), got in zip(segs, out2, strict=True):
        np.testing.assert_array_equal(got, s)


def test_one_symbol_tables_and_empty_segments_cost_nothing():
    one = np.array([TOTAL], dtype=np.uint32)
    five = _table(np.random.default_rng(0), 5)
    segs = [(np.full(1000, 4), 4, one), (np.zeros(0, dtype=np.int64), -2, five),
            (np.full(3, -9), -9, one)]
    words = codec.encode(segs)
    assert codec.information_bits(segs[0][0], 4, one) == 0.0
    assert codec.information_bits(segs[1][0], -2, five) == 0.0
    out = codec.decode(words, [(1000, 4, one), (0, -2, five), (3, -9, one)])
    np.testing.assert_array_equal(out[0], np.full(1000, 4))
    assert out[1].size == 0
    np.testing.assert_array_equal(out[2], np.full(3, -9))
    # nothing informative was coded: the stream is at most constriction's empty-coder state
    assert words.size <= 1
    assert codec.decode(codec.encode([]), []) == []


def test_one_symbol_table_between_coded_segments():
    rng = np.random.default_rng(3)
    t = _table(rng, 9)
    one = np.array([TOTAL], dtype=np.uint32)
    a, b = _sample(rng, t, -4, 300), _sample(rng, t, -4, 200)
    segs = [(a, -4, t), (np.full(50, 2), 2, one), (b, -4, t)]
    out = codec.decode(codec.encode(segs), [(300, -4, t), (50, 2, one), (200, -4, t)])
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], np.full(50, 2))
    np.testing.assert_array_equal(out[2], b)


@pytest.mark.parametrize("peaked", [False, True])
def test_compressed_size_is_close_to_the_information_content(peaked):
    rng = np.random.default_rng(4)
    segs = []
    for lo, n in [(-20, 41), (-3, 7), (-60, 121)]:
        t = _table(rng, n, peaked)
        segs.append((_sample(rng, t, lo, 100_000), lo, t))
    info = sum(codec.information_bits(s, lo, t) for s, lo, t in segs)
    assert info > 100_000
    bits = 32 * codec.encode(segs).size
    assert bits <= 1.01 * info + 32 * 4, (bits, info)
    assert bits >= info - 64  # no code beats the information content (up to the final word)


def test_information_bits_matches_a_direct_computation():
    t = np.array([TOTAL // 2, TOTAL // 4, TOTAL // 4], dtype=np.uint32)
    s = np.array([-1, -1, 0, 1, 1, 1])
    # -log2(1/2) * 2 + -log2(1/4) * 4 = 2 + 8
    assert codec.information_bits(s, -1, t) == pytest.approx(10.0)


@pytest.mark.parametrize("bad", [-4, 3, 100, -1000])
def test_symbol_outside_the_range_raises_format_error(bad):
    t = _table(np.random.default_rng(5), 6)  # symbols -3 .. 2
    s = np.array([0, 1, -3, 2, bad])
    with pytest.raises(FormatError, match="outside"):
        codec.encode([(s, -3, t)])
    with pytest.raises(FormatError):
        codec.encode([(np.array([0, 1]), -3, t), (s, -3, t)])


def test_decode_of_a_stream_with_extra_data_raises_format_error():
    rng = np.random.default_rng(6)
    t = _table(rng, 11)
    a, b = _sample(rng, t, -5, 400), _sample(rng, t, -5, 400)
    words = codec.encode([(a, -5, t), (b, -5, t)])
    # the index describes fewer symbols than the stream holds
    with pytest.raises(FormatError):
        codec.decode(words, [(400, -5, t)])
    with pytest.raises(FormatError):
        codec.decode(words, [(400, -5, t), (100, -5, t)])
    # a stream of segment `a` alone with another stream's words appended
    only_a = codec.encode([(a, -5, t)])
    with pytest.raises(FormatError):
        codec.decode(np.concatenate([only_a, codec.encode([(b, -5, t)])]), [(400, -5, t)])
    # sanity: the exact description decodes
    np.testing.assert_array_equal(codec.decode(only_a, [(400, -5, t)])[0], a)
