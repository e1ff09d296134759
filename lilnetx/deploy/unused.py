"""Zero, before a model is written, what no output of the network depends on.

The slim export (:mod:`.slimming`) removes every channel that no layer reads, with the bias,
BatchNorm entries and weights that only it used, and first drops the reads of channels that are
identically zero. Those entries do not change any output, so the file need not carry them: set
to zero they cost the entropy coder next to nothing (a zero under a table where zeros are
frequent), and a latent slice set to zero decodes to a zero weight slice. This module finds them
on the decoded network and zeros them in a copy of the LilNetX model, so the written file
decodes to a network whose every output equals the trained one's, bit for bit: a zeroed read
multiplied an exact zero, a zeroed channel is read by no one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lilnetx.core.model import LilNetXModel, decode
from lilnetx.deploy.slimming import _channel_groups, dead_channels, zero_dead_reads

_MASKED = ("weight", "bias", "running_mean")
"""The tensors of a module that :func:`unused_entries` masks (for BatchNorm: the entries of a
channel)."""


@dataclass
class Dropped:
    """What :func:`drop_unused` zeroed: latent slices (one per (out, in) kernel) and side
    entries (biases and BatchNorm entries, one per channel)."""

    latent_slices: int = 0
    side_entries: int = 0


def unused_entries(net: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bool masks, keyed like ``net.state_dict()``, of the entries of conv/linear weights and
    biases and of BatchNorm weights, biases and running means that no output of ``net`` depends
    on (``net`` in eval mode; ``example``: an input batch (N, C, H, W) to trace with). Keys with
    nothing unused are left out. Requires ``torch_pruning``."""
    work = copy.deepcopy(net).cpu().eval()
    graph = _channel_groups(work, example)
    before = {n: m.weight.detach().clone() for n, m in work.named_modules()
              if isinstance(m, nn.Conv2d | nn.Linear)}
    zero_dead_reads(work, example, graph)
    names = {id(m): n for n, m in work.named_modules()}
    masks: dict[str, torch.Tensor] = {}

    def mark(key: str, tensor: torch.Tensor, idxs) -> None:
        mask = masks.setdefault(key, torch.zeros(tensor.shape, dtype=torch.bool))
        mask[list(idxs)] = True

    for name, module in work.named_modules():
        if name in before:
            read_dropped = before[name].ne(0) & module.weight.detach().eq(0)
            if read_dropped.any():
                masks[f"{name}.weight"] = read_dropped
    dg = graph[0]
    for root, fn, idx in dead_channels(work, example, graph):
        for item in dg.get_pruning_group(root, fn, idx).items:
            module, handler = item.dep.target.module, item.dep.handler
            if not dg.is_out_channel_pruning_fn(handler) or id(module) not in names:
                continue
            prefix = names[id(module)]
            if isinstance(module, nn.Conv2d | nn.Linear):
                mark(f"{prefix}.weight", module.weight, item.idxs)
                if module.bias is not None:
                    mark(f"{prefix}.bias", module.bias, item.idxs)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                for attr in _MASKED:
                    t = getattr(module, attr, None)
                    if isinstance(t, torch.Tensor):
                        mark(f"{prefix}.{attr}", t, item.idxs)
    return masks


def drop_unused(model: LilNetXModel, example: torch.Tensor) -> tuple[LilNetXModel, Dropped]:
    """A copy of ``model`` with every latent slice, bias and BatchNorm entry that no output
    depends on set to zero (:func:`unused_entries` on its decoded network), and the counts.
    The outputs of ``decode(copy)`` equal those of ``decode(model)`` exactly."""
    plain = decode(model).eval()
    masks = unused_entries(plain, example)
    out = copy.deepcopy(model)
    with torch.no_grad():
        if masks:
            _store_side_state(out, plain)
        dropped = _apply(out, masks)
    return out, dropped


def _store_side_state(out: LilNetXModel, plain: nn.Module) -> None:
    """Set every tensor of ``out`` that the decoded ``plain`` also holds (biases, BatchNorm,
    plain layers) to the value the file stores: folded and on its power-of-two grid. Zeroing
    entries of such a tensor can only shrink its largest magnitude, so the encoder's
    requantization puts it on an equal or finer power-of-two grid, on which every stored value
    lies already: nothing else moves."""
    stored = plain.state_dict()
    for key, t in out.net.state_dict().items():
        v = stored.get(key)
        if v is not None and v.shape == t.shape and t.is_floating_point():
            t.copy_(v.to(t.device, t.dtype))


def _masked(net: nn.Module, masks: dict[str, torch.Tensor]):
    """``(module name, module, attribute, mask)`` for every mask of ``masks`` (keyed like
    ``net.state_dict()``)."""
    for name, module in net.named_modules():
        for attr in _MASKED:
            mask = masks.get(f"{name}.{attr}" if name else attr)
            if mask is not None:
                yield name, module, attr, mask


def _tensor(module: nn.Module, attr: str, mask: torch.Tensor) -> torch.Tensor | None:
    t = getattr(module, attr, None)
    return t if isinstance(t, torch.Tensor) and t.shape == mask.shape else None


def _apply(out: LilNetXModel, masks: dict[str, torch.Tensor]) -> Dropped:
    dropped = Dropped()
    layers = dict(out.latent_layers())
    for name, module, attr, mask in _masked(out.net, masks):
        if attr == "weight" and name in layers:
            layer = layers[name]
            slices = mask.reshape(mask.shape[0] * mask.shape[1], -1).any(dim=1)
            slices &= layer.latent_int().ne(0).any(dim=1).cpu()
            layer.latent[slices.to(layer.latent.device)] = 0
            dropped.latent_slices += int(slices.sum())
            continue
        t = _tensor(module, attr, mask)
        if t is None:
            continue
        m = mask.to(t.device) & t.ne(0)
        t[m] = 0
        dropped.side_entries += int(m.sum())
    return dropped


def drop_unused_plain(net: nn.Module, quantized: dict, example: torch.Tensor
                      ) -> tuple[nn.Module, dict]:
    """For a quantized plain network (``quantized``: per layer name, its integer symbols
    (numel, 1) and float32 scale, as :func:`lilnetx.methods.quantize.quantize_layers` gives
    them, already applied to ``net`` and its side state on its stored grid): a copy of both
    with the symbols, biases and BatchNorm entries that no output depends on set to zero. The
    scales are kept, so every other weight decodes as before; the outputs are unchanged."""
    masks = unused_entries(net.eval(), example)
    out = copy.deepcopy(net)
    if not masks:
        return out, quantized
    q = dict(quantized)
    with torch.no_grad():
        for name, module, attr, mask in _masked(out, masks):
            t = _tensor(module, attr, mask)
            if t is None:
                continue
            t[mask.to(t.device)] = 0
            if attr == "weight" and name in q:
                sym, scale = q[name]
                sym = sym.copy()
                sym[mask.reshape(-1).numpy()] = 0
                q[name] = (sym, scale)
    return out, q
