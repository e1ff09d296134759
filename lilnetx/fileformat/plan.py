"""The decoding plan of a ``.lnx`` file: its index checked against its architecture.

:func:`plan_of` compares every layer, group, table size, decoder and tensor shape of the index, and
every section's length, with the network the architecture describes (built on the ``meta``
device: shapes, no storage), and :func:`check_finite` refuses NaN or Inf in stored floats; both
run before the reader allocates a tensor or decodes a latent, so a crafted index cannot make the
decoder produce more than the network needs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from torch import nn

from lilnetx.core.latent import group_key
from lilnetx.errors import FormatError
from lilnetx.fileformat import codec
from lilnetx.fileformat.container import Container
from lilnetx.fileformat.limits import short
from lilnetx.layers import convertible_layers

MAX_ELEMENTS = 1 << 31
"""Most elements one tensor of the index may declare."""


def _shape(obj, what: str) -> tuple[int, ...]:
    if not isinstance(obj, list) or len(obj) > 8 or not all(
            type(v) is int and 0 <= v < MAX_ELEMENTS for v in obj):
        raise FormatError(f"bad shape for {short(what)}: {short(obj)}")
    if math.prod(obj) > MAX_ELEMENTS:
        raise FormatError(f"shape of {short(what)} is too large: {short(obj)}")
    return tuple(obj)


def _int(obj, what: str, lo: int = -(1 << 31), hi: int = 1 << 31) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise FormatError(f"bad value for {what}: {short(obj)}")
    return obj


@dataclass
class Group:
    """A checked group entry: its latents are (slices, rows), one table per row."""

    key: str
    slices: int
    rows: int
    channels: list[tuple[int, int]]  # (lo, n) per row


@dataclass
class Plan:
    """The index, checked against the architecture: everything the decoder reads."""

    layers: list[tuple[str, str, tuple[int, ...]]]
    groups: list[Group]
    decoders: list[tuple[str, tuple[int, ...]]]
    floats: list[tuple[str, tuple[int, ...]]]


def _plan_layers(entries: list, net: nn.Module, kind: str) -> list:
    targets = OrderedDict(convertible_layers(net))
    plan = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise FormatError("bad layer entry in the index")
        name, group = entry["name"], entry.get("group")
        shape = _shape(entry.get("shape"), name)
        layer = targets.get(name)
        expected = group_key(layer) if (layer is not None and kind == "latent") else f"q:{name}"
        if layer is None or tuple(layer.weight.shape) != shape or group != expected:
            raise FormatError(f"layer {short(name)} of the file does not match its architecture")
        plan.append((name, group, shape))
    names = [p[0] for p in plan]
    if kind == "latent" and names != list(targets):
        raise FormatError("the file's layers do not match its architecture")
    if len(set(names)) != len(names):
        raise FormatError("a layer appears twice in the file")
    return plan


def _plan_groups(entries: list, layers: list, kind: str) -> list[Group]:
    need: dict[str, list[int]] = {}  # group -> [slices, rows] its layers need
    for _, group, shape in layers:
        rows = shape[2] * shape[3] if (len(shape) == 4 and kind == "latent") else 1
        need.setdefault(group, [0, rows])[0] += math.prod(shape) // rows
    if not all(isinstance(g, dict) and isinstance(g.get("key"), str) for g in entries):
        raise FormatError("bad group entry in the index")
    keys = [g["key"] for g in entries]
    if set(keys) != set(need) or len(set(keys)) != len(keys):
        raise FormatError("the file's groups do not match its layers")
    out = []
    for g in entries:
        key, (slices, rows) = g["key"], need[g["key"]]
        for what, want in (("slices", slices), ("rows", rows)):
            if type(g.get(what)) is not int or g[what] != want:
                raise FormatError(f"group {short(key)} declares {short(g.get(what))} {what}, "
                                  f"its layers need {want}")
        chans = g.get("channels")
        if not isinstance(chans, list) or len(chans) != rows:
            raise FormatError(f"group {short(key)} does not have one table per row")
        channels = []
        for ch in chans:
            if not isinstance(ch, dict):
                raise FormatError(f"bad channel entry in group {short(key)}")
            n = _int(ch.get("n"), "table size", 1, 1 << codec.TABLE_PRECISION)
            channels.append((_int(ch.get("lo"), "symbol offset"), n))
        out.append(Group(key, slices, rows, channels))
    return out


def _plan_decoders(entries: list, groups: list[Group]) -> list:
    rows = {g.key: g.rows for g in groups}
    out, seen = [], set()
    for d in entries:
        key = d.get("key") if isinstance(d, dict) else None
        if not isinstance(key, str) or key not in rows or key in seen:
            raise FormatError("bad decoder entry in the index")
        shape = _shape(d.get("shape"), "decoder")
        if shape != ((1, 1) if rows[key] == 1 else (rows[key], rows[key])):
            raise FormatError(f"decoder of group {short(key)} has shape {short(shape)}")
        out.append((key, shape))
        seen.add(key)
    if seen != set(rows):
        raise FormatError("a group has no decoder")
    return out


def _plan_floats(entries: list, net: nn.Module, layers: list) -> list:
    state = net.state_dict()
    coded = {f"{name}.weight" for name, _, _ in layers}
    out, seen = [], set()
    for entry in entries:
        key = entry.get("key") if isinstance(entry, dict) else None
        if (not isinstance(key, str) or key not in state or key in seen or key in coded
                or not state[key].is_floating_point()):
            raise FormatError(f"tensor {short(key)} does not fit the architecture")
        shape = _shape(entry.get("shape"), key)
        if tuple(state[key].shape) != shape:
            raise FormatError(f"tensor {short(key)} has shape {short(shape)}, the architecture "
                              f"{tuple(state[key].shape)}")
        out.append((key, shape))
        seen.add(key)
    missing = [k for k in state
               if k not in seen and k not in coded and not k.endswith("num_batches_tracked")]
    if missing:
        raise FormatError(f"the file lacks {len(missing)} tensors of its architecture, "
                          f"e.g. {short(missing[0])}")
    return out


def _expect_length(c: Container, name: str, n: int) -> None:
    if len(c.sections[name]) != n:
        raise FormatError(f"{name} section is {len(c.sections[name])} bytes, the index "
                          f"describes {n}")


def plan_of(c: Container, net: nn.Module) -> Plan:
    """Check the index against the architecture (``net`` may live on the meta device): layers,
    group sizes, table sizes, decoder and tensor shapes, and every section's length, before any
    latent is decoded or tensor allocated (a crafted index cannot make the decoder produce more
    than the network needs)."""
    idx = c.index
    if not all(isinstance(idx.get(k), list) for k in ("layers", "groups", "floats", "decoders")):
        raise FormatError("index section lacks layers, groups, floats or decoders")
    kind = idx.get("codec")
    if kind not in ("latent", "quant"):
        raise FormatError(f"unknown codec {short(kind)} in the index")
    layers = _plan_layers(idx["layers"], net, kind)
    groups = _plan_groups(idx["groups"], layers, kind)
    out = Plan(layers, groups, _plan_decoders(idx["decoders"], groups),
               _plan_floats(idx["floats"], net, layers))
    _expect_length(c, "tables", 2 * sum(n for g in groups for _, n in g.channels))
    _expect_length(c, "decoders", 4 * sum(math.prod(s) for _, s in out.decoders))
    _expect_length(c, "floats", 4 * sum(math.prod(s) for _, s in out.floats))
    if len(c.sections["latents"]) % 4:
        raise FormatError("latents section has a partial word")
    return out


def check_finite(c: Container, p: Plan) -> None:
    """Every stored decoder, scale and float tensor is finite (neither NaN nor Inf)."""
    for name, entries, what in (("decoders", p.decoders, "decoder of group"),
                                ("floats", p.floats, "tensor")):
        values = np.frombuffer(c.sections[name], dtype="<f4")
        bad = ~np.isfinite(values)
        if bad.any():
            first, pos = int(np.argmax(bad)), 0
            for key, shape in entries:
                pos += math.prod(shape)
                if first < pos:
                    raise FormatError(f"{name} section: the {what} {short(key)} holds NaN or "
                                      "Inf")
