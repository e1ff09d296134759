"""Format version 2 of ``.lnx``: every byte derived from the architecture where it can be.

Container (little-endian)::

    magic b"LNX\\x00" | version u16 = 2
    section*: kind u8 | length varint | bytes        (empty sections are left out)
    crc32 u32 of every preceding byte

Sections: ``arch`` (raw deflate of the architecture JSON with a preset dictionary of the words
architectures use), ``index`` (binary, :mod:`lilnetx.fileformat.binary`), ``side`` (ANS stream of
the quantized side tensors: decoders, biases, BatchNorm), ``latents`` (ANS stream of the latents,
or of a baseline's quantized weights), ``raw`` (float32 tensors that are on no integer grid, e.g.
the dense reference). Each ANS stream is stored without the zero bytes that end its last word.

The index holds no names and no shapes: layers, groups, kernel positions and tensors are those
of the network the architecture builds, in its module and ``state_dict`` order. It holds:

- a codec byte (0: latent layers, 1: plain network, some layers quantized);
- one flag per BatchNorm (in module order) whose running statistics are folded into its weight
  and bias (mean 0, variance ``1 - eps``: not stored);
- latent codec, per group: a byte (form ``0`` empty, ``1`` scalar, ``2`` diagonal, ``3`` full;
  ``+4``: one table shared by the group's kernel positions), its tables
  (:mod:`lilnetx.fileformat.tables`) and its decoder as a side tensor. An empty group (all
  latents zero) stores no table and no decoder;
- plain codec: one flag per conv/linear layer, quantized or not; per quantized layer its float32
  scale and table;
- per remaining float tensor of the ``state_dict``: a varint (0: float32 in ``raw``; else
  ``1 + zigzag(e)``: integers times ``2**e`` in ``side``) and, for integers, a table.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lilnetx.core.latent import group_key
from lilnetx.core.sidequant import foldable, is_folded
from lilnetx.errors import FormatError
from lilnetx.fileformat import codec
from lilnetx.fileformat.binary import Reader, Writer
from lilnetx.fileformat.limits import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    short,
)
from lilnetx.fileformat.tables import TableSpec, choose
from lilnetx.layers import convertible_layers

VERSION2 = 2
SECTIONS2 = {1: "arch", 2: "index", 3: "side", 4: "latents", 5: "raw"}
KIND2 = {v: k for k, v in SECTIONS2.items()}
LATENT, PLAIN = 0, 1
FORMS = {"empty": 0, "scalar": 1, "diagonal": 2, "full": 3}
FORM_NAMES = {v: k for k, v in FORMS.items()}
SHARED = 4
MIN_EXP, MAX_EXP = -160, 130
_EXACT_BITS = 16  # finest grid tried when looking for a tensor's integers

# Words the architecture JSON uses, most frequent last (zlib prefers close matches). Part of
# format version 2: changing it changes how every version-2 file decodes.
ZDICT = (
    b'"call_function","call_method","call_module","placeholder","output","getattr",'
    b'"target":"torch.nn.functional.relu","target":"operator.add","target":"torch.flatten",'
    b'"type":"BatchNorm2d","type":"Conv2d","type":"Linear","type":"ReLU","type":"MaxPool2d",'
    b'"type":"AdaptiveAvgPool2d","type":"Sequential","args":[],"kwargs":{},"modules":[{"name":"'
    b',"nodes":[{"args":["kind":"graph","input_shape":[1,3,32,32],"output_shape":[1,10],'
    b'"bias":true,"bias":false,"dilation":[1,1],"groups":1,"kernel_size":[3,3],'
    b'"padding":[1,1],"stride":[1,1],"stride":[2,2],"in_channels":3,"out_channels":16,'
    b'"in_features":64,"out_features":10,"eps":1e-05,"momentum":0.1,"affine":true,'
    b'"name":"cifar10","name":"fashion_mnist","name":"mnist","name":"digits",'
    b'"model":"resnet20","model":"resnet56","model":"mlp","model":"tv:resnet18",'
    b'{"data":{"channels":1,"height":28,"mean":[0.286'
    b'],"name":"fashion_mnist","std":[0.353'
    b'],"width":28},"image_size":28,"in_channels":1,"kind":"registry","model":"lenet5",'
    b'"num_classes":10,"width":1.0}'
)


# ----------------------------------------------------------------------------- container


def pack2(body: list[tuple[str, bytes]]) -> bytes:
    """Header, the non-empty sections ``(name, bytes)`` in order, checksum."""
    out = Writer()
    out.buf += b"LNX\x00" + struct.pack("<H", VERSION2)
    for name, data in body:
        if data:
            out.byte(KIND2[name]).uint(len(data))
            out.buf += data
    out.buf += struct.pack("<I", zlib.crc32(out.buf))
    return out.bytes()


def split2(data: bytes, view: memoryview) -> dict[str, memoryview]:
    """The sections of a version-2 file whose magic, version and checksum are checked."""
    r = Reader(view[6:-4], "section table")
    sections: dict[str, memoryview] = {}
    while r.pos < len(r.data):
        kind = r.byte("section kind")
        length = r.uint("section length")
        if length > len(r.data) - r.pos:
            raise FormatError(f"section of {length} bytes runs past the end of the file "
                              f"({len(r.data) - r.pos} bytes are left)")
        name = SECTIONS2.get(kind)
        if name is None or name in sections:
            raise FormatError(f"bad section (kind {kind}, {length} bytes)")
        sections[name] = view[6 + r.pos:6 + r.pos + length]
        r.pos += length
    for name in SECTIONS2.values():
        sections.setdefault(name, view[0:0])
    if not len(sections["arch"]):
        raise FormatError("file has no architecture section")
    return sections


def arch_bytes(arch: dict) -> bytes:
    """Raw deflate, with :data:`ZDICT`, of the compact sorted JSON of ``arch``."""
    import json

    from lilnetx.fileformat.limits import cut

    try:
        text = json.dumps(arch, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise FormatError(cut(f"cannot store the architecture: {e}")) from None
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT)
    return z.compress(text.encode()) + z.flush()


def arch_json(data: bytes | memoryview) -> dict:
    """Inverse of :func:`arch_bytes`, inflating at most ``MAX_JSON_BYTES`` (same checks as a
    version-1 JSON section: depth, digits, finite numbers)."""
    from lilnetx.fileformat.container import parse_json

    d = zlib.decompressobj(-15, ZDICT)
    try:
        raw = d.decompress(bytes(data), MAX_JSON_BYTES)
    except zlib.error as e:
        raise FormatError(f"arch section is corrupt: {short(str(e))}") from None
    if d.unconsumed_tail or not d.eof or d.unused_data:
        raise FormatError(f"arch section is truncated, followed by garbage or inflates to more "
                          f"than {MAX_JSON_BYTES} bytes (depth limit {MAX_JSON_DEPTH})")
    return parse_json(raw, "arch")


def _stream(segments) -> bytes:
    data = codec.encode(segments).astype("<u4").tobytes()
    end = len(data)
    while end > len(data) - 3 and end > 0 and data[end - 1] == 0:
        end -= 1
    return data[:end]


def _words(data: bytes | memoryview) -> np.ndarray:
    raw = bytes(data) + b"\x00" * (-len(data) % 4)
    return np.frombuffer(raw, dtype="<u4")


# ----------------------------------------------------------------------------- layout


@dataclass
class Layout:
    """What the architecture fixes: layers, groups, BatchNorms and state keys, in order."""

    layers: list[tuple[str, tuple[int, ...]]]
    groups: OrderedDict[str, list[tuple[str, tuple[int, ...]]]]
    bns: list[tuple[str, nn.Module]]
    state: OrderedDict[str, tuple[tuple[int, ...], bool]]  # key -> (shape, is float)

    @staticmethod
    def of(net: nn.Module) -> Layout:
        layers, groups = [], OrderedDict()
        for name, m in convertible_layers(net):
            shape = tuple(m.weight.shape)
            layers.append((name, shape))
            groups.setdefault(group_key(m), []).append((name, shape))
        bns = [(name, m) for name, m in net.named_modules() if foldable(m)]
        state = OrderedDict((k, (tuple(t.shape), t.is_floating_point()))
                            for k, t in net.state_dict().items())
        return Layout(layers, groups, bns, state)

    def side_keys(self, coded: set[str], folded: list[bool]) -> list[str]:
        """State keys stored as side tensors: float, not coded, not a folded statistic."""
        skip = set(coded)
        for (name, _), f in zip(self.bns, folded, strict=True):
            if f:
                prefix = f"{name}." if name else ""
                skip |= {prefix + "running_mean", prefix + "running_var"}
        out = []
        for key, (_, is_float) in self.state.items():
            if key in skip or key.endswith("num_batches_tracked"):
                continue
            if not is_float:
                raise FormatError(f"cannot store non-float state {short(key)}")
            out.append(key)
        return out


def rows_of(shape: tuple[int, ...]) -> int:
    return shape[2] * shape[3] if len(shape) == 4 else 1


def decoder_shape(form: str, rows: int) -> tuple[int, ...]:
    return {"full": (rows, rows), "diagonal": (rows,), "scalar": (1, 1)}[form]


# ----------------------------------------------------------------------------- encoding


@dataclass
class _Out:
    index: Writer = field(default_factory=Writer)
    side: list = field(default_factory=list)
    latents: list = field(default_factory=list)
    raw: list = field(default_factory=list)


def exact_integers(values: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(q, e)`` with ``values == q * 2**e`` exactly and ``e`` as large as possible, when
    ``values`` lie on a grid of at most 16 bits; else None (stored as float32)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise FormatError("a stored tensor holds NaN or Inf")
    top = float(np.abs(v).max(initial=0.0))
    if top == 0:
        return np.zeros(v.size, dtype=np.int64), 0
    mant, exp = math.frexp(top)
    e = (exp - 1 if mant == 0.5 else exp) - (_EXACT_BITS - 1)
    if not MIN_EXP <= e <= MAX_EXP:
        return None
    q = np.ldexp(v, -e)
    if not (q == np.round(q)).all():
        return None
    q = q.astype(np.int64)
    while e < MAX_EXP and not (q & 1).any():
        q >>= 1
        e += 1
    return q, e


def _side(out: _Out, values: np.ndarray) -> None:
    """One side tensor: integers on its grid into the side stream, else float32 raw."""
    found = exact_integers(values)
    if found is None:
        out.index.uint(0)
        out.raw.append(np.asarray(values, dtype="<f4").reshape(-1))
        return
    q, e = found
    out.index.uint(1 + (2 * e if e >= 0 else -2 * e - 1))
    spec = choose(q)
    spec.write(out.index)
    out.side.append((q, spec.lo, spec.freqs()))


def _sections(arch: dict, out: _Out) -> bytes:
    raw = b"".join(a.tobytes() for a in out.raw)
    return pack2([("arch", arch_bytes(arch)), ("index", out.index.bytes()),
                  ("side", _stream(out.side)), ("latents", _stream(out.latents)),
                  ("raw", raw)])


def _group_tables(lat: np.ndarray) -> tuple[bool, TableSpec | list[TableSpec]]:
    """The cheaper of per-position tables and one shared table for latents (slices, rows):
    (shared?, the shared spec or one spec per position)."""
    per = [choose(lat[:, c]) for c in range(lat.shape[1])]
    cost_per = sum(s.size_bits() + s.info_bits for s in per)
    shared = choose(lat) if lat.shape[1] > 1 else None
    use_shared = shared is not None and shared.size_bits() + shared.info_bits < cost_per
    return use_shared, (shared if use_shared else per)


def encode_latent_v2(model, arch: dict) -> bytes:
    """Version-2 bytes of a :class:`~lilnetx.core.model.LilNetXModel`."""
    from lilnetx.core.model import decode

    plain = decode(model)
    state = plain.state_dict()
    for name, _ in model.latent_layers():
        if not bool(torch.isfinite(state[f"{name}.weight"]).all()):
            raise FormatError(f"the decoded weight {short(name + '.weight')} holds NaN or Inf")
    layout = Layout.of(plain)
    out = _Out()
    out.index.byte(LATENT)
    folded = [is_folded(m) for _, m in layout.bns]
    out.index.bits(folded)
    for group, members in model.groups().items():
        lat = torch.cat([m.latent_int() for _, m in members]).cpu().numpy().astype(np.int64)
        dec = model.decoders[group]
        if not lat.any():
            out.index.byte(FORMS["empty"])
            continue
        use_shared, specs = _group_tables(lat)
        out.index.byte(FORMS[dec.form] + (SHARED if use_shared else 0))
        if use_shared:
            specs.write(out.index)
            freqs = specs.freqs()
            out.latents += [(lat[:, c], specs.lo, freqs) for c in range(lat.shape[1])]
        else:
            for c, spec in enumerate(specs):
                spec.write(out.index)
                out.latents.append((lat[:, c], spec.lo, spec.freqs()))
        _side(out, dec.stored_weight().numpy())
    coded = {f"{name}.weight" for name, _ in model.latent_layers()}
    for key in layout.side_keys(coded, folded):
        _side(out, state[key].detach().cpu().numpy())
    return _sections(arch, out)


def encode_plain_v2(net: nn.Module, arch: dict, quantized: dict) -> bytes:
    """Version-2 bytes of a plain network: the layers in ``quantized`` (name -> (int symbols
    (numel, 1), float32 scale)) as integers, everything else as side tensors."""
    layout = Layout.of(net)
    state = net.state_dict()
    out = _Out()
    out.index.byte(PLAIN)
    folded = [is_folded(m) for _, m in layout.bns]
    out.index.bits(folded)
    out.index.bits([name in quantized for name, _ in layout.layers])
    for name, _ in layout.layers:
        if name not in quantized:
            continue
        sym, scale = quantized[name]
        if not float(np.abs(sym).max(initial=0)) * abs(float(scale)) < 3.4e38:
            raise FormatError(f"the quantized weight of {short(name)} is not finite in float32")
        out.index.f32(float(scale))
        spec = choose(sym[:, 0])
        spec.write(out.index)
        out.latents.append((sym[:, 0], spec.lo, spec.freqs()))
    coded = {f"{name}.weight" for name in quantized}
    for key in layout.side_keys(coded, folded):
        _side(out, state[key].detach().cpu().numpy())
    return _sections(arch, out)
