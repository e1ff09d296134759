"""Little binary encodings of the compact (version 2) index: unsigned LEB128 varints, zigzag
signed varints, bytes and bit masks, read back with bounds on every value."""

from __future__ import annotations

import struct

from lilnetx.errors import FormatError

MAX_VARINT_BYTES = 10
"""A varint of more bytes than this is refused (a 64-bit value needs at most 10)."""


class Writer:
    """Append-only byte buffer."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint(self, v: int) -> Writer:
        """Unsigned LEB128: 7 bits per byte, 1 byte below 128."""
        if v < 0:
            raise ValueError(f"uint of a negative value {v}")
        while True:
            byte = v & 0x7F
            v >>= 7
            self.buf.append(byte | (0x80 if v else 0))
            if not v:
                return self

    def sint(self, v: int) -> Writer:
        """Zigzag-mapped signed varint: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
        return self.uint(2 * v if v >= 0 else -2 * v - 1)

    def byte(self, v: int) -> Writer:
        self.buf.append(v & 0xFF)
        return self

    def f32(self, v: float) -> Writer:
        self.buf += struct.pack("<f", v)
        return self

    def bits(self, flags: list[bool]) -> Writer:
        """Flags packed 8 per byte, least significant bit first."""
        for i in range(0, len(flags), 8):
            self.buf.append(sum(1 << j for j, f in enumerate(flags[i:i + 8]) if f))
        return self

    def bytes(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Sequential bounded reads of a :class:`Writer`'s encodings; a value out of its stated
    range, or a read past the end, raises :class:`FormatError` naming ``what``."""

    def __init__(self, data: bytes | memoryview, what: str = "index"):
        self.data, self.pos, self.what = bytes(data), 0, what

    def _fail(self, msg: str):
        raise FormatError(f"{self.what} section: {msg}")

    def uint(self, what: str, hi: int = (1 << 63)) -> int:
        v = shift = 0
        for _ in range(MAX_VARINT_BYTES):
            if self.pos >= len(self.data):
                self._fail(f"ends inside {what}")
            b = self.data[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if v > hi:
                    self._fail(f"{what} is {v}, at most {hi}")
                return v
        self._fail(f"{what} is a varint longer than {MAX_VARINT_BYTES} bytes")

    def sint(self, what: str, lo: int = -(1 << 62), hi: int = 1 << 62) -> int:
        z = self.uint(what)
        v = z >> 1 if not z & 1 else -((z + 1) >> 1)
        if not lo <= v <= hi:
            self._fail(f"{what} is {v}, outside [{lo}, {hi}]")
        return v

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            self._fail(f"ends inside {what}")
        self.pos += 1
        return self.data[self.pos - 1]

    def f32(self, what: str) -> float:
        if self.pos + 4 > len(self.data):
            self._fail(f"ends inside {what}")
        (v,) = struct.unpack_from("<f", self.data, self.pos)
        self.pos += 4
        return v

    def bits(self, n: int, what: str) -> list[bool]:
        out = []
        for i in range(0, n, 8):
            b = self.byte(what)
            out += [bool(b >> j & 1) for j in range(min(8, n - i))]
        return out

    def done(self) -> None:
        if self.pos != len(self.data):
            self._fail(f"{len(self.data) - self.pos} bytes are left over")
