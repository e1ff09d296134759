"""The ``.lnx`` compressed model file: entropy-coded latents and everything else needed to
rebuild the network, with no pickle anywhere.

The container (header, sections, checksum) is :mod:`lilnetx.fileformat.container`. Sections: ``arch``
(zlib JSON: how to rebuild the network), ``index`` (zlib JSON: layers, symbol ranges, tensor
names and shapes), ``tables`` (uint16 frequency-1 per symbol), ``decoders`` (float32), ``floats``
(float32 biases, BatchNorm and other state), ``latents`` (uint32 ANS words).

Reading is bounded (:mod:`lilnetx.fileformat.limits`): the checksum is verified before anything is parsed;
the architecture is built on the ``meta`` device and refused above ``MAX_PARAMS``; every count,
shape and section length of the index is checked against it, and every stored float must be
finite, before any tensor is allocated or any latent decoded. ``save`` runs the same checks on
the bytes it is about to write, so it never writes a file that ``load`` refuses.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lilnetx.core.latent import decode_exact
from lilnetx.core.model import LilNetXModel
from lilnetx.errors import DataError, FormatError
from lilnetx.fileformat import codec
from lilnetx.fileformat.archspec import build_from_arch, check_architecture, meta_network
from lilnetx.fileformat.compact import encode_latent_v2, encode_plain_v2
from lilnetx.fileformat.container import (
    MAGIC,
    SECTIONS,
    VERSION,
    Container,
    parse,
    read,
)
from lilnetx.fileformat.graphtrace import describe
from lilnetx.fileformat.limits import short
from lilnetx.fileformat.plan import Plan, check_finite, plan_of
from lilnetx.layers import convertible_layers

__all__ = ["MAGIC", "SECTIONS", "VERSION", "Container", "Decoded", "build_network",
           "check_architecture", "decode_file", "decode_latents", "encode_model",
           "encode_plain", "load", "parse", "read", "save"]

_NO_ARCH = ("the model has no architecture description; pass example_input=a batch (N, C, H, W) "
            "to store its graph, or build it with lilnetx.run/RunSpec, or pass arch={'kind': "
            "'registry', 'model': NAME, 'in_channels': C, 'image_size': S, 'num_classes': K}")


def encode_model(model: LilNetXModel, arch: dict | None = None) -> bytes:
    """The bytes of the ``.lnx`` file of ``model`` (format version 2,
    :mod:`lilnetx.fileformat.compact`): latents, decoders and the rest of the state exactly as
    :func:`lilnetx.core.model.decode` gives them."""
    arch = _latent_arch(model, arch)
    for name, layer in model.latent_layers():
        if not bool(torch.isfinite(layer.latent.detach()).all()):
            raise FormatError(f"the latent of layer {short(name)} holds NaN or Inf")
    return encode_latent_v2(model, arch)


def _latent_arch(model, arch: dict | None) -> dict:
    if not isinstance(model, LilNetXModel):
        raise FormatError(f"save expects a LilNetXModel, got {type(model).__name__}")
    arch = arch if arch is not None else model.arch
    if not arch:
        raise FormatError(_NO_ARCH)
    return arch


def encode_plain(net: nn.Module, arch: dict, quantized: dict | None = None) -> bytes:
    """The ``.lnx`` bytes (format version 2) of a plain network: layers in ``quantized`` (from
    :func:`lilnetx.methods.quantize.quantize_layers`) as entropy-coded integers with a float32
    scale each; every other tensor as integers on its power-of-two grid when it lies on one of
    at most 16 bits (the side information of :mod:`lilnetx.core.sidequant`), else float32
    (``quantized=None`` and unquantized state: the dense fp32 reference)."""
    if not arch:
        raise FormatError(_NO_ARCH)
    return encode_plain_v2(net, arch, quantized or {})


def _arch_of(model: nn.Module, arch: dict | None, example_input) -> dict:
    """The architecture ``save`` stores: ``arch``; else the model's registry ``arch``; else,
    given ``example_input``, the traced graph (:func:`lilnetx.fileformat.graphtrace.describe`); else
    the model's graph ``arch`` (a network loaded from a graph file)."""
    if arch:
        return arch
    own = getattr(model, "arch", None) or (
        getattr(model.net, "arch", None) if isinstance(model, LilNetXModel) else None)
    if isinstance(own, dict) and own.get("kind") != "graph":
        return own
    if example_input is not None:
        return describe(model, example_input)
    if own:
        return own
    raise FormatError(_NO_ARCH)


def save(model: nn.Module, path: str | os.PathLike, arch: dict | None = None,
         quantized: dict | None = None, example_input: torch.Tensor | None = None) -> int:
    """Write ``model`` to ``path`` as a ``.lnx`` file; returns its size in **bytes**.

    A :class:`LilNetXModel` is stored by its latents; a plain network by
    :func:`encode_plain` (``quantized`` layers as integers, the rest float32). The file is
    written to a temporary name and renamed, so a reader never sees half a file.

    The architecture is ``arch``, else the model's ``arch`` attribute when it names a registry
    model, else the network's graph traced on ``example_input`` (a batch (N, C, H, W)): any
    network of allowlisted operators (:mod:`lilnetx.fileformat.graph`), loaded back without
    its code.

    Raises :class:`FormatError`, writing nothing, for anything :func:`load` would refuse: an
    architecture above :data:`lilnetx.fileformat.limits.MAX_PARAMS` (checked before encoding), one that does
    not describe ``model``, NaN or Inf in a stored tensor, a file above ``MAX_FILE_BYTES``; and
    for a network without an architecture description when no ``example_input`` is given.
    """
    if not isinstance(model, nn.Module):
        raise FormatError(f"save expects an nn.Module, got {type(model).__name__}")
    try:
        arch = _arch_of(model, arch, example_input)
        meta_network(arch)  # before encoding: a network over the budget is never encoded
        data = (encode_model(model, arch) if isinstance(model, LilNetXModel)
                else encode_plain(model, arch, quantized))
    except FormatError as e:
        raise FormatError(f"refusing to write {short(os.fspath(path))}: {e}") from None
    return write(data, path)


def write(data: bytes, path: str | os.PathLike) -> int:
    """Write encoded ``.lnx`` bytes (a method's :meth:`~lilnetx.methods.Method.encode`) to
    ``path`` after the reader's own checks on them; returns the size in **bytes**. The file is
    written to a temporary name and renamed, so a reader never sees half a file."""
    path = os.fspath(path)
    try:
        c = parse(data)
        if c.version == 1:
            meta, _ = meta_network(c.arch)
            check_finite(c, plan_of(c, meta))
        else:
            decode_file(c)  # the reader's every check, on the bytes about to be written
    except FormatError as e:
        raise FormatError(f"refusing to write {short(path)}: {e}") from None
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DataError(f"cannot write {short(path)}: {e.strerror or e}") from None
    return len(data)


# ----------------------------------------------------------------------------- decoding


class _Reader:
    """Sequential reads of little-endian elements from one section, checked against its length."""

    def __init__(self, buf, dtype: str, what: str):
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
    layers: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    side: list = field(default_factory=list)  # version 2: stored float tensors (SideTensor)
    forms: dict[str, str] = field(default_factory=dict)  # version 2: decoder form per group


def _decode_latents(c: Container, plan: Plan
                    ) -> tuple[dict[str, np.ndarray], dict[str, list[dict]]]:
    """Integer latents per group, shape (slices, rows) int64, and the per-channel tables."""
    tables = _Reader(c.sections["tables"], "<u2", "tables")
    words = np.frombuffer(c.sections["latents"], dtype="<u4")
    segments, tabs, informative = [], {}, False
    for g in plan.groups:
        tabs[g.key] = []
        for lo, n in g.channels:
            freqs = tables.take(n).astype(np.uint32) + 1
            if int(freqs.sum()) != 1 << codec.TABLE_PRECISION:
                raise FormatError("a probability table does not sum to its precision")
            informative |= n > 1 and g.slices > 0
            segments.append((g.slices, lo, freqs))
            tabs[g.key].append({"lo": lo, "freqs": freqs})
    tables.done()
    if informative and words.size == 0:
        raise FormatError("latent stream is empty but the tables say it carries information")
    try:
        columns = codec.decode(words, segments)
    except BaseException as e:  # constriction reports a broken stream as a Rust panic
        if isinstance(e, KeyboardInterrupt | SystemExit | MemoryError):
            raise
        raise FormatError(f"latent stream is corrupt: {short(str(e))}") from None
    out, k = {}, 0
    for g in plan.groups:
        out[g.key] = np.stack(columns[k:k + g.rows], axis=1)
        k += g.rows
    return out, tabs


def _checked_plan(c: Container) -> Plan:
    meta, _ = meta_network(c.arch)
    plan = plan_of(c, meta)
    check_finite(c, plan)
    return plan


def decode_latents(c: Container) -> tuple[dict[str, np.ndarray], dict[str, list[dict]]]:
    """Checked decode of the latents: (slices, rows) int64 per group, and the tables."""
    if c.version == 2:
        d = decode_file(c)
        groups: dict[str, list[np.ndarray]] = {}
        for name, group, _ in d.layers:
            groups.setdefault(group, []).append(d.latents[name])
        return {g: np.concatenate(v) for g, v in groups.items()}, d.tables
    return _decode_latents(c, _checked_plan(c))


def decode_file(c: Container) -> Decoded:
    """Rebuild the network of a parsed file and decode everything into it (CPU, eval mode).

    Raises :class:`FormatError` for anything inconsistent, before allocating the network."""
    if c.version == 2:
        from lilnetx.fileformat.compact_read import decode_v2

        return decode_v2(c)
    plan = _checked_plan(c)
    latents, tables = _decode_latents(c, plan)
    dec = _Reader(c.sections["decoders"], "<f4", "decoders")
    decoders = {key: torch.from_numpy(dec.take(math.prod(shape)).copy()).reshape(shape)
                for key, shape in plan.decoders}
    dec.done()
    net = build_from_arch(c.arch)
    targets = dict(convertible_layers(net))
    per_layer: dict[str, np.ndarray] = {}
    offsets = dict.fromkeys(latents, 0)
    with torch.no_grad():
        for name, group, shape in plan.layers:
            n = math.prod(shape) // latents[group].shape[1]
            lat = latents[group][offsets[group]:offsets[group] + n]
            offsets[group] += n
            per_layer[name] = lat
            weight = decode_exact(torch.from_numpy(lat), decoders[group], shape)
            if not bool(torch.isfinite(weight).all()):
                raise FormatError(f"the decoded weights of layer {short(name)} overflow float32")
            targets[name].weight.copy_(weight)
        fl = _Reader(c.sections["floats"], "<f4", "floats")
        state = net.state_dict()
        for key, shape in plan.floats:
            state[key].copy_(torch.from_numpy(fl.take(math.prod(shape)).copy()).reshape(shape))
        fl.done()
    return Decoded(net.eval(), per_layer, tables, c, plan.layers)


def build_network(c: Container) -> nn.Module:
    """Rebuild the plain network of a parsed file with its decoded weights (CPU, eval mode)."""
    return decode_file(c).net


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild the plain decoded network stored in a ``.lnx`` file (CPU, eval mode).

    Raises :class:`FormatError` for a missing, truncated, corrupt, foreign or oversized file.
    """
    return build_network(read(path))
