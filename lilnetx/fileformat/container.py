"""The ``.lnx`` container: header, sections and checksum, and the encoding of its JSON sections.

Version 1 (read, no longer written; version 2 is :mod:`lilnetx.fileformat.compact`).
Layout (little-endian)::

    magic b"LNX\\x00" | version u16 | section count u16
    section*: kind u8 | length u32 | bytes
    crc32 u32 of every preceding byte

Reading is bounded (see :mod:`lilnetx.fileformat.limits`): only regular files of at most
``MAX_FILE_BYTES`` are opened, the magic number is checked before the rest is read, the checksum
before anything is parsed, and a JSON section may decompress to ``MAX_JSON_BYTES`` at most, nest
``MAX_JSON_DEPTH`` deep and hold only finite numbers and integers of ``MAX_JSON_DIGITS`` digits.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass

from lilnetx.errors import FormatError
from lilnetx.fileformat.limits import (
    MAX_FILE_BYTES,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_DIGITS,
    cut,
    short,
)

MAGIC = b"LNX\x00"
VERSION = 2
"""The version :func:`lilnetx.fileformat.save` writes (:mod:`lilnetx.fileformat.compact`)."""
VERSIONS = (1, 2)
"""The versions this reader decodes (version 1: this module's layout, JSON index)."""
SECTIONS = {1: "arch", 2: "index", 3: "tables", 4: "decoders", 5: "floats", 6: "latents"}
KIND = {v: k for k, v in SECTIONS.items()}
HEAD = struct.Struct("<4sHH")
SEC = struct.Struct("<BI")


@dataclass
class Container:
    """A parsed file: raw section bytes by name (read-only views of the file's bytes), plus the
    decoded JSON of arch and index."""

    sections: dict[str, bytes | memoryview]
    arch: dict
    index: dict  # version 1's JSON index; {} for version 2 (its index is a binary section)
    size_bytes: int
    version: int = 1


def zjson(obj, what: str) -> bytes:
    """zlib-compressed JSON of ``obj``; a value a reader would refuse raises FormatError."""
    try:
        text = json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise FormatError(cut(f"cannot store the {what}: {e}")) from None
    return zlib.compress(text.encode(), 9)


class _Refused(Exception):
    """A JSON value the reader does not accept (raised from inside json.loads)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (at most "
                       f"{MAX_JSON_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"a number out of range ({short(text)})")
    return value


def _parse_constant(text: str):
    raise _Refused(f"a number that is not finite ({text})")


def _check_depth(obj, what: str) -> None:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise FormatError(f"{what} section nests deeper than {MAX_JSON_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def unzjson(data: bytes | memoryview, what: str) -> dict:
    """The JSON object of a zlib section, decompressed to at most ``MAX_JSON_BYTES``."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, MAX_JSON_BYTES)
    except zlib.error as e:
        raise FormatError(f"{what} section is corrupt: {cut(str(e))}") from None
    if d.unconsumed_tail or (not d.eof and len(raw) >= MAX_JSON_BYTES):
        raise FormatError(f"{what} section decompresses to more than {MAX_JSON_BYTES} bytes")
    if not d.eof or d.unused_data:
        raise FormatError(f"{what} section is truncated or followed by garbage")
    return parse_json(raw, what)


def parse_json(raw: bytes, what: str) -> dict:
    """The JSON object in ``raw`` (already bounded in size), refusing what :func:`unzjson`
    refuses: huge integers, non-finite numbers, deep nesting, anything but an object."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_parse_constant)
    except _Refused as e:
        raise FormatError(f"{what} section holds {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(cut(f"{what} section is corrupt: {e}")) from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} section is not a JSON object")
    _check_depth(obj, what)
    return obj


def pack(body: list[tuple[str, bytes]]) -> bytes:
    """Header, sections ``(name, bytes)`` in order, checksum."""
    out = bytearray(HEAD.pack(MAGIC, 1, len(body)))
    for name, data in body:
        if len(data) > 0xFFFFFFFF:
            raise FormatError(f"the {name} section is too large ({len(data)} bytes)")
        out += SEC.pack(KIND[name], len(data)) + data
    out += struct.pack("<I", zlib.crc32(out))
    if len(out) > MAX_FILE_BYTES:
        raise FormatError(f"the file would be {len(out)} bytes, more than the {MAX_FILE_BYTES} "
                          "a .lnx file may have (lilnetx.fileformat.limits.MAX_FILE_BYTES)")
    return bytes(out)


def _check_magic(head: bytes) -> None:
    if len(head) < HEAD.size + 4:
        raise FormatError(f"file is too short ({len(head)} bytes) to be a .lnx model")
    if head[:4] != MAGIC:
        raise FormatError("not a .lnx model file (bad magic number)")


def parse(data: bytes) -> Container:
    """Check magic, version and checksum, split the sections and decode the JSON ones."""
    _check_magic(data[:HEAD.size + 4])
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"file is larger than {MAX_FILE_BYTES} bytes")
    _, version, count = HEAD.unpack_from(data, 0)
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    view = memoryview(data)
    if zlib.crc32(view[:-4]) != crc:
        raise FormatError("checksum mismatch: the file is truncated or corrupt")
    if version == 2:
        from lilnetx.fileformat.compact import arch_json, split2

        sections = split2(data, view)
        return Container(sections, arch_json(sections["arch"]), {}, len(data), version=2)
    if version != 1:
        raise FormatError(f"unsupported .lnx version {version}; this reader supports "
                          f"{', '.join(map(str, VERSIONS))}")
    pos, end, sections = HEAD.size, len(data) - 4, {}
    for _ in range(count):
        if pos + SEC.size > end:
            raise FormatError("section table runs past the end of the file")
        kind, length = SEC.unpack_from(data, pos)
        pos += SEC.size
        if kind not in SECTIONS or SECTIONS[kind] in sections or pos + length > end:
            raise FormatError(f"bad section (kind {kind}, {length} bytes)")
        sections[SECTIONS[kind]] = view[pos:pos + length]
        pos += length
    if pos != end or set(sections) != set(SECTIONS.values()):
        raise FormatError("file sections are incomplete or followed by garbage")
    return Container(sections, unzjson(sections["arch"], "arch"),
                     unzjson(sections["index"], "index"), len(data))


def read(path: str | os.PathLike) -> Container:
    """Read and :func:`parse` a file. Only a regular file of at most ``MAX_FILE_BYTES`` is read,
    and only once its first bytes hold the magic number; anything else (a missing file, a
    directory, a device such as ``/dev/zero``, a pipe) raises :class:`FormatError`."""
    name = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):  # never open a pipe or device
            raise FormatError(f"{short(name)} is not a regular file")
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"{short(name)} is not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise FormatError(f"{short(name)} is {info.st_size} bytes, more than the "
                                  f"{MAX_FILE_BYTES} a .lnx file may have "
                                  "(lilnetx.fileformat.limits.MAX_FILE_BYTES)")
            _check_magic(f.read(HEAD.size + 4))
            f.seek(0)
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise FormatError(f"cannot read model file {short(name)}: {e.strerror}") from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise FormatError(f"cannot read model file {short(name)}: {e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"{short(name)} grew past {MAX_FILE_BYTES} bytes while being read")
    return parse(data)
