"""The ``.lnx`` compressed model file: entropy-coded latents and everything else needed to
rebuild the network, with no pickle anywhere.

Layout (little-endian)::

    magic b"LNX\\x00" | version u16 | section count u16
    section*: kind u8 | length u32 | bytes
    crc32 u32 of every preceding byte

Sections: ``arch`` (zlib JSON: how to rebuild the network), ``index`` (zlib JSON: layers,
symbol ranges, stream lengths, tensor names and shapes), ``tables`` (uint16 frequency-1 per
symbol), ``decoders`` (float32), ``floats`` (float32 biases, BatchNorm and other state),
``latents`` (uint32 ANS words). The checksum is verified before anything is parsed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import codec
from .errors import FormatError
from .latent import decode_exact, group_key
from .model import LilNetXModel, convertible_layers, decode

MAGIC = b"LNX\x00"
VERSION = 1
SECTIONS = {1: "arch", 2: "index", 3: "tables", 4: "decoders", 5: "floats", 6: "latents"}
_KIND = {v: k for k, v in SECTIONS.items()}
_HEAD = struct.Struct("<4sHH")
_SEC = struct.Struct("<BI")
MAX_JSON_BYTES = 64 << 20
MAX_ELEMENTS = 1 << 31


@dataclass
class Container:
    """A parsed file: raw section bytes by name, plus the decoded JSON of arch and index."""

    sections: dict[str, bytes]
    arch: dict
    index: dict
    size_bytes: int


def _zjson(obj) -> bytes:
    return zlib.compress(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode(), 9)


def _unzjson(data: bytes, what: str) -> dict:
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, MAX_JSON_BYTES)
        if d.unconsumed_tail or not d.eof or d.unused_data:
            raise FormatError(f"{what} section is truncated, too large or followed by garbage")
        obj = json.loads(raw.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{what} section is corrupt: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} section is not a JSON object")
    return obj


def encode_model(model: LilNetXModel, arch: dict | None = None) -> bytes:
    """The bytes of the ``.lnx`` file of ``model`` (see the module docstring for the layout)."""
    if not isinstance(model, LilNetXModel):
        raise FormatError(f"save expects a LilNetXModel, got {type(model).__name__}")
    arch = arch if arch is not None else model.arch
    if not arch:
        raise FormatError(
            "the model has no architecture description; build it with lilnetx.run/RunSpec or "
            "pass arch={'model': NAME, 'in_channels': C, 'image_size': S, 'num_classes': K}")
    layers = model.latent_layers()
    plain_state = decode(model).state_dict()
    latent_keys = {f"{name}.weight" for name, _ in layers}
    index: dict = {"layers": [], "groups": [], "floats": [], "decoders": []}
    tables, segments = [], []
    for name, layer in layers:
        index["layers"].append({"name": name, "group": layer.group,
                                "shape": list(layer.weight_shape)})
    for group, members in model.groups().items():
        lat = torch.cat([m.latent_int() for _, m in members]).cpu().numpy().astype(np.int64)
        lo, hi = lat.min(axis=0), lat.max(axis=0)
        tabs = model.priors[group].quantized_tables(lo, hi, codec.TABLE_PRECISION)
        chans = []
        for c, tab in enumerate(tabs):
            segments.append((lat[:, c], int(lo[c]), tab))
            chans.append({"lo": int(lo[c]), "n": len(tab)})
            tables.append((tab - 1).astype("<u2"))
        index["groups"].append({"key": group, "rows": lat.shape[1], "slices": lat.shape[0],
                                "channels": chans})
        index["decoders"].append({"key": group,
                                  "shape": list(model.decoders[group].weight.shape)})
    dec = [model.decoders[g["key"]].weight.detach().cpu().float().numpy().astype("<f4")
           for g in index["groups"]]
    floats = _float_state(plain_state, latent_keys, index)
    index["codec"] = "latent"
    return _pack(arch, index, tables, dec, floats, segments)


def _float_state(state: dict, skip: set[str], index: dict) -> list[np.ndarray]:
    """Every float tensor of ``state`` not in ``skip`` (num_batches_tracked counters dropped)."""
    floats = []
    for key, t in state.items():
        if key in skip or key.endswith("num_batches_tracked"):
            continue
        if not t.is_floating_point():
            raise FormatError(f"cannot store non-float state {key!r} ({t.dtype})")
        index["floats"].append({"key": key, "shape": list(t.shape)})
        floats.append(t.detach().cpu().float().numpy().astype("<f4"))
    return floats


def _pack(arch, index, tables, dec, floats, segments) -> bytes:
    body = [("arch", _zjson(arch)), ("index", _zjson(index)),
            ("tables", b"".join(a.tobytes() for a in tables)),
            ("decoders", b"".join(a.tobytes() for a in dec)),
            ("floats", b"".join(a.tobytes() for a in floats)),
            ("latents", codec.encode(segments).astype("<u4").tobytes())]
    out = bytearray(_HEAD.pack(MAGIC, VERSION, len(body)))
    for kind, data in body:
        out += _SEC.pack(_KIND[kind], len(data)) + data
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def encode_plain(net: nn.Module, arch: dict, quantized: dict | None = None) -> bytes:
    """The ``.lnx`` bytes of a plain network: layers in ``quantized`` (from
    :func:`lilnetx.quant.quantize_layers`) as entropy-coded integers with a float32 scale each,
    everything else as float32 (``quantized=None``: the dense fp32 reference)."""
    from .quant import tables_for

    if not arch:
        raise FormatError("a plain network needs an architecture description (arch=...)")
    quantized = quantized or {}
    index: dict = {"layers": [], "groups": [], "floats": [], "decoders": [], "codec": "quant"}
    tables, segments, dec = [], [], []
    tabs = tables_for(quantized)
    for name, layer in convertible_layers(net):
        if name not in quantized:
            continue
        sym, scale = quantized[name]
        lo, freqs = tabs[name]
        key = f"q:{name}"
        index["layers"].append({"name": name, "group": key, "shape": list(layer.weight.shape)})
        index["groups"].append({"key": key, "rows": 1, "slices": int(sym.shape[0]),
                                "channels": [{"lo": lo, "n": len(freqs)}]})
        index["decoders"].append({"key": key, "shape": [1, 1]})
        tables.append((freqs - 1).astype("<u2"))
        segments.append((sym[:, 0], lo, freqs))
        dec.append(np.asarray([[scale]], dtype="<f4"))
    skip = {f"{e['name']}.weight" for e in index["layers"]}
    floats = _float_state(net.state_dict(), skip, index)
    return _pack(arch, index, tables, dec, floats, segments)


def save(model: nn.Module, path: str | os.PathLike, arch: dict | None = None,
         quantized: dict | None = None) -> int:
    """Write ``model`` to ``path`` as a ``.lnx`` file; returns its size in **bytes**.

    A :class:`LilNetXModel` is stored by its latents; a plain network by
    :func:`encode_plain` (``quantized`` layers as integers, the rest float32). The file is
    written to a temporary name and renamed, so a reader never sees half a file.
    """
    if isinstance(model, LilNetXModel):
        data = encode_model(model, arch)
    elif isinstance(model, nn.Module):
        data = encode_plain(model, arch if arch is not None else getattr(model, "arch", None),
                            quantized)
    else:
        raise FormatError(f"save expects an nn.Module, got {type(model).__name__}")
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def parse(data: bytes) -> Container:
    """Check magic, version and checksum, split the sections and decode the JSON ones."""
    if len(data) < _HEAD.size + 4:
        raise FormatError(f"file is too short ({len(data)} bytes) to be a .lnx model")
    magic, version, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError("not a .lnx model file (bad magic number)")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise FormatError("checksum mismatch: the file is truncated or corrupt")
    if version != VERSION:
        raise FormatError(f"unsupported .lnx version {version}; this reader supports {VERSION}")
    pos, end, sections = _HEAD.size, len(data) - 4, {}
    for _ in range(count):
        if pos + _SEC.size > end:
            raise FormatError("section table runs past the end of the file")
        kind, length = _SEC.unpack_from(data, pos)
        pos += _SEC.size
        if kind not in SECTIONS or SECTIONS[kind] in sections or pos + length > end:
            raise FormatError(f"bad section (kind {kind}, {length} bytes)")
        sections[SECTIONS[kind]] = data[pos:pos + length]
        pos += length
    if pos != end or set(sections) != set(SECTIONS.values()):
        raise FormatError("file sections are incomplete or followed by garbage")
    return Container(sections, _unzjson(sections["arch"], "arch"),
                     _unzjson(sections["index"], "index"), len(data))


def read(path: str | os.PathLike) -> Container:
    """Read and :func:`parse` a file; a missing file raises :class:`FormatError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FormatError(f"cannot read model file {os.fspath(path)!r}: {e.strerror}") from None
    return parse(data)


def _shape(obj, what: str) -> tuple[int, ...]:
    if not isinstance(obj, list) or not all(
            type(v) is int and 0 <= v < MAX_ELEMENTS for v in obj):
        raise FormatError(f"bad shape for {what}: {obj!r}")
    if math.prod(obj) > MAX_ELEMENTS:
        raise FormatError(f"shape of {what} is too large: {obj!r}")
    return tuple(obj)


def _int(obj, what: str, lo: int = -(1 << 31), hi: int = 1 << 31) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise FormatError(f"bad value for {what}: {obj!r}")
    return obj


class _Reader:
    """Sequential reads of little-endian elements from one section, checked against its length."""

    def __init__(self, buf: bytes, dtype: str, what: str):
        if len(buf) % np.dtype(dtype).itemsize:
            raise FormatError(f"{what} section has a partial element")
        self.arr = np.frombuffer(buf, dtype=dtype)
        self.pos, self.what = 0, what

    def take(self, n: int) -> np.ndarray:
        if n < 0 or self.pos + n > self.arr.size:
            raise FormatError(f"{self.what} section is shorter than the index says")
        out = self.arr[self.pos:self.pos + n]
        self.pos += n
        return out

    def done(self) -> None:
        if self.pos != self.arr.size:
            raise FormatError(f"{self.what} section is longer than the index says")


@dataclass
class Decoded:
    """A fully decoded file: the network, and per layer its integer latents (slices, rows)."""

    net: nn.Module
    latents: dict[str, np.ndarray]
    tables: dict[str, list[dict]]
    container: Container


def _plan(c: Container, net: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """Check the index's layers against the rebuilt network and the groups' sizes, before any
    latent is decoded (a crafted index cannot make the decoder produce more than the network
    needs). Returns ``(name, group, shape)`` per layer."""
    idx = c.index
    if not all(isinstance(idx.get(k), list) for k in ("layers", "groups", "floats", "decoders")):
        raise FormatError("index section lacks layers, groups, floats or decoders")
    kind = idx.get("codec")
    if kind not in ("latent", "quant"):
        raise FormatError(f"unknown codec {kind!r} in the index")
    targets = OrderedDict(convertible_layers(net))
    plan = []
    for entry in idx["layers"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise FormatError("bad layer entry in the index")
        name, group = entry["name"], entry.get("group")
        shape = _shape(entry.get("shape"), name)
        layer = targets.get(name)
        expected = group_key(layer) if (layer is not None and kind == "latent") else f"q:{name}"
        if layer is None or tuple(layer.weight.shape) != shape or group != expected:
            raise FormatError(f"layer {name!r} of the file does not match its architecture")
        plan.append((name, group, shape))
    names = [p[0] for p in plan]
    if kind == "latent" and names != list(targets):
        raise FormatError("the file's layers do not match its architecture")
    if len(set(names)) != len(names):
        raise FormatError("a layer appears twice in the file")
    need: dict[str, int] = {}
    for _, group, shape in plan:
        rows = shape[2] * shape[3] if (len(shape) == 4 and kind == "latent") else 1
        need[group] = need.get(group, 0) + math.prod(shape) // rows
    if not all(isinstance(g, dict) and isinstance(g.get("key"), str) for g in idx["groups"]):
        raise FormatError("bad group entry in the index")
    groups = {g["key"]: g for g in idx["groups"]}
    if set(groups) != set(need) or len(groups) != len(idx["groups"]):
        raise FormatError("the file's groups do not match its layers")
    for key, g in groups.items():
        if g.get("slices") != need[key]:
            raise FormatError(f"group {key!r} declares {g.get('slices')!r} slices, its layers "
                              f"need {need[key]}")
    return plan


def _decode_latents(c: Container) -> tuple[dict[str, np.ndarray], dict[str, list[dict]]]:
    """Integer latents per group, shape (slices, rows) int64, and the per-channel tables.
    Call after :func:`_plan` has checked the group sizes."""
    tables = _Reader(c.sections["tables"], "<u2", "tables")
    if len(c.sections["latents"]) % 4:
        raise FormatError("latents section has a partial word")
    words = np.frombuffer(c.sections["latents"], dtype="<u4")
    segments, shapes, tabs = [], [], {}
    informative = False
    for g in c.index["groups"]:
        key = g["key"]
        slices = _int(g["slices"], f"{key} slices", 0, MAX_ELEMENTS)
        rows = _int(g.get("rows"), f"{key} rows", 1, 1 << 16)
        chans = g.get("channels")
        if not isinstance(chans, list) or len(chans) != rows:
            raise FormatError(f"bad group entry {key!r}")
        shapes.append((key, slices, rows))
        tabs[key] = []
        for ch in chans:
            if not isinstance(ch, dict):
                raise FormatError(f"bad channel entry in group {key!r}")
            n = _int(ch.get("n"), "table size", 1, 1 << codec.TABLE_PRECISION)
            lo = _int(ch.get("lo"), "symbol offset")
            freqs = tables.take(n).astype(np.uint32) + 1
            if int(freqs.sum()) != 1 << codec.TABLE_PRECISION:
                raise FormatError("a probability table does not sum to its precision")
            informative |= n > 1 and slices > 0
            segments.append((slices, lo, freqs))
            tabs[key].append({"lo": lo, "freqs": freqs})
    tables.done()
    if informative and words.size == 0:
        raise FormatError("latent stream is empty but the tables say it carries information")
    try:
        columns = codec.decode(words, segments)
    except BaseException as e:  # constriction reports a broken stream as a Rust panic
        if isinstance(e, KeyboardInterrupt | SystemExit | MemoryError):
            raise
        raise FormatError(f"latent stream is corrupt: {e}") from None
    out, k = {}, 0
    for key, _slices, rows in shapes:
        out[key] = np.stack(columns[k:k + rows], axis=1)
        k += rows
    return out, tabs


def decode_latents(c: Container) -> tuple[dict[str, np.ndarray], dict[str, list[dict]]]:
    """Checked decode of the latents alone: (slices, rows) int64 per group, and the tables."""
    from .archspec import build_from_arch

    _plan(c, build_from_arch(c.arch))
    return _decode_latents(c)


def decode_file(c: Container) -> Decoded:
    """Rebuild the network of a parsed file and decode everything into it (CPU, eval mode).

    Raises :class:`FormatError` for anything inconsistent."""
    from .archspec import build_from_arch

    net = build_from_arch(c.arch)
    plan = _plan(c, net)
    latents, tables = _decode_latents(c)
    targets = dict(convertible_layers(net))
    per_layer: dict[str, np.ndarray] = {}
    dec = _Reader(c.sections["decoders"], "<f4", "decoders")
    decoders = {}
    for d in c.index["decoders"]:
        if not isinstance(d, dict) or not isinstance(d.get("key"), str) or d["key"] not in latents:
            raise FormatError("bad decoder entry in the index")
        shape = _shape(d.get("shape"), "decoder")
        rows = latents[d["key"]].shape[1]
        if shape != ((1, 1) if rows == 1 else (rows, rows)):
            raise FormatError(f"decoder of group {d['key']!r} has shape {shape}")
        decoders[d["key"]] = torch.from_numpy(dec.take(math.prod(shape)).copy()).reshape(shape)
    dec.done()
    if set(decoders) != set(latents):
        raise FormatError("a group has no decoder")
    offsets = dict.fromkeys(latents, 0)
    with torch.no_grad():
        for name, group, shape in plan:
            n = math.prod(shape) // latents[group].shape[1]
            lat = latents[group][offsets[group]:offsets[group] + n]
            offsets[group] += n
            per_layer[name] = lat
            targets[name].weight.copy_(decode_exact(torch.from_numpy(lat), decoders[group], shape))
        fl = _Reader(c.sections["floats"], "<f4", "floats")
        state = net.state_dict()
        seen = set()
        for entry in c.index["floats"]:
            key = entry.get("key") if isinstance(entry, dict) else None
            if not isinstance(key, str) or key not in state or key in seen:
                raise FormatError(f"tensor {key!r} does not fit the architecture")
            shape = _shape(entry.get("shape"), key)
            if tuple(state[key].shape) != shape:
                raise FormatError(f"tensor {key!r} has shape {shape}, the architecture "
                                  f"{tuple(state[key].shape)}")
            state[key].copy_(torch.from_numpy(fl.take(math.prod(shape)).copy()).reshape(shape))
            seen.add(key)
        fl.done()
        seen |= {f"{name}.weight" for name, _, _ in plan}
        missing = [k for k in state if k not in seen and not k.endswith("num_batches_tracked")]
        if missing:
            raise FormatError(f"the file lacks {len(missing)} tensors of its architecture, "
                              f"e.g. {missing[0]!r}")
    return Decoded(net.eval(), per_layer, tables, c)


def build_network(c: Container) -> nn.Module:
    """Rebuild the plain network of a parsed file with its decoded weights (CPU, eval mode)."""
    return decode_file(c).net


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild the plain decoded network stored in a ``.lnx`` file (CPU, eval mode).

    Raises :class:`FormatError` for a missing, truncated, corrupt or foreign file.
    """
    return build_network(read(path))
