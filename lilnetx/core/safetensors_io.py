"""Reading and writing ``.safetensors`` files (the Hugging Face tensor format) without pickle.

The ``safetensors`` package is used when it is installed; otherwise :func:`read_safetensors`
parses the format itself, bounded: an 8-byte little-endian header length (at most
:data:`MAX_HEADER_BYTES`), a UTF-8 JSON object mapping each tensor name to its ``dtype``,
``shape`` and ``data_offsets`` (``[begin, end)`` into the data that follows, optional
``__metadata__`` of strings), then the raw little-endian data. Every entry is checked before
anything is allocated: a known dtype, a shape of non-negative integers whose size matches its
byte range, ranges inside the file that cover the data exactly once. Any violation is a
:class:`lilnetx.ConfigError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch

from lilnetx.errors import ConfigError

MAX_HEADER_BYTES = 16 << 20
"""Largest JSON header read (16 MiB; a header of 10,000 tensors is about 1 MB)."""

_DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "F64": ("<f8", torch.float64), "F32": ("<f4", torch.float32), "F16": ("<f2", torch.float16),
    "BF16": ("<u2", torch.bfloat16), "I64": ("<i8", torch.int64), "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16), "I8": ("i1", torch.int8), "U8": ("u1", torch.uint8),
    "BOOL": ("?", torch.bool),
}
_NAMES = {torch_dtype: name for name, (_, torch_dtype) in _DTYPES.items()}


def _bad(path: str, why: str) -> ConfigError:
    return ConfigError(f"{os.path.basename(path)[:80]!r} is not a valid safetensors file: {why}")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, by name, on the CPU."""
    path = os.fspath(path)
    try:
        from safetensors.torch import load_file
    except ImportError:
        return _read(path)
    try:
        return dict(load_file(path))
    except Exception as e:  # the package's SafetensorError, or an OSError
        raise _bad(path, str(e)[:120]) from None


def _naturals(v) -> bool:
    """Whether ``v`` is a JSON list of non-negative integers."""
    return isinstance(v, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def _entry(path: str, name: str, info, data_len: int) -> tuple[int, int, str, list[int]]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"entry {name[:60]!r} must hold exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _DTYPES:
        raise _bad(path, f"entry {name[:60]!r} has dtype {str(dtype)[:20]!r}; supported: "
                         f"{', '.join(_DTYPES)}")
    if not _naturals(shape) or len(shape) > 8:
        raise _bad(path, f"entry {name[:60]!r} has a bad shape")
    if not _naturals(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_len:
        raise _bad(path, f"entry {name[:60]!r} has data_offsets outside the file's data")
    size = math.prod(shape) * np.dtype(_DTYPES[dtype][0]).itemsize
    if size != offsets[1] - offsets[0]:
        raise _bad(path, f"entry {name[:60]!r}: shape {shape} of {dtype} needs {size} bytes, "
                         f"its offsets give {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1], dtype, shape


def _read(path: str) -> dict[str, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, "shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES or n > total - 8:
                raise _bad(path, f"header length {n} is beyond the file or above "
                                 f"{MAX_HEADER_BYTES} bytes")
            raw = f.read(n)
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise _bad(path, "the header is not UTF-8 JSON") from None
            if not isinstance(header, dict):
                raise _bad(path, "the header is not a JSON object")
            data_len = total - 8 - n
            meta = header.pop("__metadata__", {})
            if not isinstance(meta, dict) or not all(
                    isinstance(v, str) for v in meta.values()):
                raise _bad(path, "__metadata__ must map strings to strings")
            entries = sorted((*_entry(path, name, info, data_len), name)
                             for name, info in header.items())
            at = 0
            for begin, end, *_ in entries:
                if begin != at:
                    raise _bad(path, "tensor data overlaps or leaves a gap")
                at = end
            if at != data_len:
                raise _bad(path, f"{data_len - at} bytes of data belong to no tensor")
            data = f.read(data_len)
    except OSError as e:
        raise ConfigError(f"cannot read {os.path.basename(path)[:80]!r}: "
                          f"{e.strerror or e}") from None
    out = {}
    for begin, end, dtype, shape, name in entries:
        np_dtype, torch_dtype = _DTYPES[dtype]
        arr = np.frombuffer(data, dtype=np_dtype, count=(end - begin) // np.dtype(np_dtype)
                            .itemsize, offset=begin).reshape(shape)
        if dtype == "BF16":  # the upper half of a float32
            t = torch.from_numpy((arr.astype(np.uint32) << 16).view(np.float32)).to(torch_dtype)
        else:
            t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
        out[name] = t
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``tensors`` (name -> CPU tensor) as a ``.safetensors`` file (little-endian hosts)."""
    if sys.byteorder != "little":
        raise ConfigError("write_safetensors needs a little-endian machine")
    header, blobs, at = {}, [], 0
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise ConfigError(f"tensor {name!r} has dtype {t.dtype}, which safetensors lacks here")
        blob = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference does
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)
