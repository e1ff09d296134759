"""Encoders of format version 1 (JSON index, float32 side information). Files are no longer
written in it by the library; these encoders remain so that tests can build version-1 files for
the reader, which still decodes them (see :mod:`lilnetx.fileformat.lnx`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lilnetx.core.model import LilNetXModel, decode
from lilnetx.errors import FormatError
from lilnetx.fileformat import codec
from lilnetx.fileformat.container import pack, zjson
from lilnetx.fileformat.limits import short
from lilnetx.layers import convertible_layers

_NO_ARCH = "the model has no architecture description"


def encode_model_v1(model: LilNetXModel, arch: dict | None = None) -> bytes:
    """The bytes of the ``.lnx`` file of ``model`` (see the module docstring for the layout)."""
    if not isinstance(model, LilNetXModel):
        raise FormatError(f"save expects a LilNetXModel, got {type(model).__name__}")
    arch = arch if arch is not None else model.arch
    if not arch:
        raise FormatError(_NO_ARCH)
    layers = model.latent_layers()
    plain_state = decode(model).state_dict()
    latent_keys = {f"{name}.weight" for name, _ in layers}
    for key in sorted(latent_keys):
        if not bool(torch.isfinite(plain_state[key]).all()):
            raise FormatError(f"the decoded weight {short(key)} holds NaN or Inf")
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
        if model.decoders[group].form == "diagonal":
            raise FormatError("format version 1 has no diagonal decoders")
    dec = [model.decoders[g["key"]].stored_weight().numpy().astype("<f4")
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
            raise FormatError(f"cannot store non-float state {short(key)} ({t.dtype})")
        index["floats"].append({"key": key, "shape": list(t.shape)})
        floats.append(t.detach().cpu().float().numpy().astype("<f4"))
    return floats


def _pack(arch, index, tables, dec, floats, segments) -> bytes:
    return pack([("arch", zjson(arch, "architecture")), ("index", zjson(index, "index")),
                 ("tables", b"".join(a.tobytes() for a in tables)),
                 ("decoders", b"".join(a.tobytes() for a in dec)),
                 ("floats", b"".join(a.tobytes() for a in floats)),
                 ("latents", codec.encode(segments).astype("<u4").tobytes())])


def encode_plain_v1(net: nn.Module, arch: dict, quantized: dict | None = None) -> bytes:
    """The ``.lnx`` bytes of a plain network: layers in ``quantized`` (from
    :func:`lilnetx.methods.quantize.quantize_layers`) as entropy-coded integers with a float32 scale each,
    everything else as float32 (``quantized=None``: the dense fp32 reference)."""
    if not arch:
        raise FormatError(_NO_ARCH)
    quantized = quantized or {}
    index: dict = {"layers": [], "groups": [], "floats": [], "decoders": [], "codec": "quant"}
    tables, segments, dec = [], [], []
    tabs = {name: codec.empirical_table(sym) for name, (sym, _) in quantized.items()}
    for name, layer in convertible_layers(net):
        if name not in quantized:
            continue
        sym, scale = quantized[name]
        if not float(np.abs(sym).max(initial=0)) * abs(float(scale)) < 3.4e38:
            raise FormatError(f"the quantized weight of {short(name)} is not finite in float32")
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


