"""Decoding of format version 2 (:mod:`lilnetx.fileformat.compact`).

The whole index is read and checked against the network the architecture builds on the ``meta``
device before any tensor is allocated or any symbol decoded: every count comes from the
architecture (bounded by ``MAX_PARAMS``), every table from a few bounded integers, and the
sections' lengths must match what the index describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lilnetx.core.latent import decode_exact
from lilnetx.core.sidequant import unit_variance
from lilnetx.errors import FormatError
from lilnetx.fileformat import codec
from lilnetx.fileformat.archspec import build_from_arch, meta_network
from lilnetx.fileformat.binary import Reader
from lilnetx.fileformat.compact import (
    FORM_NAMES,
    LATENT,
    MAX_EXP,
    MIN_EXP,
    PLAIN,
    SHARED,
    Layout,
    _words,
    decoder_shape,
    rows_of,
)
from lilnetx.fileformat.container import Container
from lilnetx.fileformat.limits import short
from lilnetx.fileformat.tables import TableSpec, read_spec


@dataclass
class SideTensor:
    """One stored float tensor: ``exp`` None for float32, else integers times ``2**exp``."""

    key: str
    shape: tuple[int, ...]
    exp: int | None
    spec: TableSpec | None
    values: torch.Tensor | None = None
    ints: np.ndarray | None = None


@dataclass
class GroupEntry:
    key: str
    form: str
    shared: bool
    slices: int
    rows: int
    members: list[tuple[str, tuple[int, ...]]]
    specs: list[TableSpec]
    decoder: SideTensor | None


@dataclass
class Plan2:
    kind: int
    folded: list[bool]
    groups: list[GroupEntry]
    quantized: list[tuple[str, tuple[int, ...], float, TableSpec]]
    side: list[SideTensor]


def _side_entry(r: Reader, key: str, shape: tuple[int, ...]) -> SideTensor:
    code = r.uint(f"step of {short(key)}", 1 << 20)
    if code == 0:
        return SideTensor(key, shape, None, None)
    z = code - 1
    e = z >> 1 if not z & 1 else -((z + 1) >> 1)
    if not MIN_EXP <= e <= MAX_EXP:
        raise FormatError(f"index section: step 2^{e} of {short(key)} is out of range")
    return SideTensor(key, shape, e, read_spec(r, math.prod(shape), short(key)))


def read_plan(c: Container, layout: Layout) -> Plan2:
    """The checked index of a version-2 file."""
    r = Reader(c.sections["index"])
    kind = r.byte("codec")
    if kind not in (LATENT, PLAIN):
        raise FormatError(f"index section: unknown codec {kind}")
    folded = r.bits(len(layout.bns), "BatchNorm flags")
    groups, quantized = [], []
    if kind == LATENT:
        for key, members in layout.groups.items():
            rows = rows_of(members[0][1])
            slices = sum(math.prod(shape) // rows for _, shape in members)
            code = r.byte(f"group {key}")
            form, shared = FORM_NAMES.get(code & ~SHARED), bool(code & SHARED)
            if form is None or (form == "empty" and shared) or (
                    rows == 1 and form not in ("empty", "scalar")):
                raise FormatError(f"index section: bad form {code} for group {short(key)}")
            if form == "empty":
                groups.append(GroupEntry(key, form, False, slices, rows, members, [], None))
                continue
            if shared:
                specs = [read_spec(r, slices * rows, key)] * rows
            else:
                specs = [read_spec(r, slices, key) for _ in range(rows)]
            dec = _side_entry(r, f"decoder {key}", decoder_shape(form, rows))
            groups.append(GroupEntry(key, form, shared, slices, rows, members, specs, dec))
        coded = {f"{name}.weight" for name, _ in layout.layers}
    else:
        flags = r.bits(len(layout.layers), "quantized-layer flags")
        for (name, shape), q in zip(layout.layers, flags, strict=True):
            if q:
                scale = r.f32(f"scale of {short(name)}")
                if not math.isfinite(scale):
                    raise FormatError(f"index section: the scale of {short(name)} is not finite")
                quantized.append((name, shape, scale, read_spec(r, math.prod(shape), name)))
        coded = {f"{name}.weight" for name, _, _, _ in quantized}
    side = [_side_entry(r, key, layout.state[key][0]) for key in layout.side_keys(coded, folded)]
    r.done()
    stored = [g.decoder for g in groups if g.decoder] + side
    raw = sum(math.prod(t.shape) for t in stored if t.exp is None)
    if len(c.sections["raw"]) != 4 * raw:
        raise FormatError(f"raw section is {len(c.sections['raw'])} bytes, the index describes "
                          f"{4 * raw}")
    return Plan2(kind, folded, groups, quantized, side)


def _decode_stream(data, segments: list[tuple[int, int, np.ndarray]], what: str) -> list:
    if any(len(f) > 1 and n for n, _, f in segments) and not len(data):
        raise FormatError(f"{what} stream is empty but the tables say it carries information")
    try:
        return codec.decode(_words(data), segments)
    except BaseException as e:  # constriction reports a broken stream as a Rust panic
        if isinstance(e, KeyboardInterrupt | SystemExit | MemoryError):
            raise
        raise FormatError(f"{what} stream is corrupt: {short(str(e))}") from None


def _values(t: SideTensor, ints: np.ndarray) -> torch.Tensor:
    with np.errstate(over="ignore"):  # an overflow is refused just below
        v = np.ldexp(ints.astype(np.float64), t.exp).astype(np.float32)
    if not np.isfinite(v).all():
        raise FormatError(f"the stored tensor {short(t.key)} overflows float32")
    return torch.from_numpy(v).reshape(t.shape)


def decode_v2(c: Container):
    """Rebuild the network of a parsed version-2 file and decode everything into it."""
    from lilnetx.fileformat.lnx import Decoded

    meta, _ = meta_network(c.arch)
    layout = Layout.of(meta)
    plan = read_plan(c, layout)
    ints_side = [t for t in [g.decoder for g in plan.groups if g.decoder] + plan.side
                 if t.exp is not None]
    cols = _decode_stream(c.sections["side"], [(math.prod(t.shape), t.spec.lo, t.spec.freqs())
                                               for t in ints_side], "side")
    for t, q in zip(ints_side, cols, strict=True):
        t.ints, t.values = q, _values(t, q)
    raw = np.frombuffer(c.sections["raw"], dtype="<f4")
    pos = 0
    for t in [g.decoder for g in plan.groups if g.decoder] + plan.side:
        if t.exp is None:
            n = math.prod(t.shape)
            v = raw[pos:pos + n]
            pos += n
            if not np.isfinite(v).all():
                raise FormatError(f"raw section: the tensor {short(t.key)} holds NaN or Inf")
            t.values = torch.from_numpy(v.copy()).reshape(t.shape)
    net = build_from_arch(c.arch)
    modules = dict(net.named_modules())
    state = net.state_dict()
    per_layer, tables, layers = {}, {}, []
    with torch.no_grad():
        if plan.kind == LATENT:
            segs = [(g.slices, s.lo, s.freqs()) for g in plan.groups for s in g.specs]
            columns = _decode_stream(c.sections["latents"], segs, "latent")
            k = 0
            for g in plan.groups:
                if g.form == "empty":
                    lat = np.zeros((g.slices, g.rows), dtype=np.int64)
                    tables[g.key] = [{"lo": 0, "freqs": np.asarray([1 << codec.TABLE_PRECISION])}
                                     ] * g.rows
                else:
                    lat = np.stack(columns[k:k + g.rows], axis=1)
                    tables[g.key] = [{"lo": s.lo, "freqs": s.freqs()} for s in g.specs]
                    k += g.rows
                off = 0
                for name, shape in g.members:
                    n = math.prod(shape) // g.rows
                    per_layer[name] = lat[off:off + n]
                    off += n
                    if g.form == "empty":
                        w = torch.zeros(shape)
                    else:
                        w = decode_exact(torch.from_numpy(per_layer[name]), g.decoder.values,
                                         shape)
                    if not bool(torch.isfinite(w).all()):
                        raise FormatError(f"the decoded weights of layer {short(name)} overflow "
                                          "float32")
                    state[f"{name}.weight"].copy_(w)
            order = {name: i for i, (name, _) in enumerate(layout.layers)}
            layers = sorted(((name, g.key, shape) for g in plan.groups
                             for name, shape in g.members), key=lambda t: order[t[0]])
        else:
            segs = [(math.prod(shape), s.lo, s.freqs()) for _, shape, _, s in plan.quantized]
            columns = _decode_stream(c.sections["latents"], segs, "latent")
            for (name, shape, scale, s), sym in zip(plan.quantized, columns, strict=True):
                w = decode_exact(torch.from_numpy(sym.reshape(-1, 1)),
                                 torch.tensor([[scale]]), shape)
                if not bool(torch.isfinite(w).all()):
                    raise FormatError(f"the decoded weights of layer {short(name)} overflow "
                                      "float32")
                state[f"{name}.weight"].copy_(w)
                per_layer[name] = sym.reshape(-1, 1)
                tables[f"q:{name}"] = [{"lo": s.lo, "freqs": s.freqs()}]
                layers.append((name, f"q:{name}", shape))
        for t in plan.side:
            state[t.key].copy_(t.values)
        for (name, _), f in zip(layout.bns, plan.folded, strict=True):
            if f:
                m = modules[name]
                m.running_mean.zero_()
                m.running_var.fill_(unit_variance(m.eps))
    dec = Decoded(net.eval(), per_layer, tables, c, layers)
    dec.side = [g.decoder for g in plan.groups if g.decoder] + plan.side
    dec.forms = {g.key: g.form for g in plan.groups}
    return dec
