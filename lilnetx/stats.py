"""Sparsity and rate statistics, per layer and overall (LilNetX sec. 4).

Fractions are in [0, 1]; bits are bits (not bytes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lilnetx.core.model import LilNetXModel


@dataclass
class LayerStats:
    """Statistics of one latent layer.

    ``slices`` are latent rows (one k x k kernel of a conv, one weight of a linear layer).
    ``*_latent`` fields are measured on the integer latents, ``*_weight`` on decoded weights.
    """

    name: str
    group: str
    shape: list[int]
    params: int
    slices: int
    bits: float
    weight_sparsity_latent: float
    slice_sparsity_latent: float
    weight_sparsity: float
    slice_sparsity: float
    out_channels: int
    out_channels_zero: int
    in_channels: int
    in_channels_zero: int

    def as_dict(self) -> dict:
        return asdict(self)


def layer_kind(shape: list[int], in_channels: int | None = None) -> str:
    """What a layer is, from its weight shape (O, I/groups, kh, kw) or (O, I): ``conv5x5``,
    ``conv3x3 dw`` (depthwise), ``conv3x3 g4`` (4 groups), ``linear``."""
    if len(shape) == 2:
        return "linear"
    if len(shape) == 4:
        kind = f"conv{shape[2]}x{shape[3]}"
        groups = in_channels // shape[1] if in_channels and shape[1] else 1
        if groups > 1:
            kind += " dw" if groups == in_channels == shape[0] else f" g{groups}"
        return kind
    return f"{len(shape)}-d"


def layer_title(name: str, shape: list[int], in_channels: int | None = None) -> str:
    """A layer as a person reads it: ``features.0 conv5x5 6x1x5x5``."""
    return f"{name} {layer_kind(shape, in_channels)} {'x'.join(map(str, shape))}"


def _groups(layer) -> int:
    return int(getattr(layer, "groups", 1))


def _zero_inputs(slice_zero: torch.Tensor, layer) -> int:
    """Input channels every kernel reading them is zero, for ``slice_zero`` (O, I/groups)."""
    g = _groups(layer)
    o, ig = slice_zero.shape
    per_group = slice_zero.reshape(g, o // g, ig).all(dim=1)  # (groups, I/groups)
    return int(per_group.sum())


@torch.no_grad()
def layer_stats(model: LilNetXModel) -> list[LayerStats]:
    """One :class:`LayerStats` per latent layer, in module order; bits at evaluation (rounded)."""
    out = []
    for _, layers in model.groups().items():
        prior = model.priors[layers[0][1].group]
        for name, layer in layers:
            lat = layer.latent_int()
            bits = float(prior.bits(lat.t()))
            w = layer.export_weight()
            shape = list(layer.weight_shape)
            o = shape[0]
            i = shape[1]
            w2 = w.reshape(o, i, -1)
            slice_zero = (w2 == 0).all(dim=2)
            lat_zero_rows = (lat == 0).all(dim=1)
            out.append(LayerStats(
                name=name, group=layer.group, shape=shape, params=w.numel(), slices=lat.shape[0],
                bits=bits,
                weight_sparsity_latent=float((lat == 0).float().mean()),
                slice_sparsity_latent=float(lat_zero_rows.float().mean()),
                weight_sparsity=float((w == 0).float().mean()),
                slice_sparsity=float(slice_zero.float().mean()),
                out_channels=o, out_channels_zero=int(slice_zero.all(dim=1).sum()),
                in_channels=i * _groups(layer), in_channels_zero=_zero_inputs(slice_zero, layer),
            ))
    order = {n: k for k, (n, _) in enumerate(model.latent_layers())}
    out.sort(key=lambda s: order[s.name])
    return out


def summarize(stats: list[LayerStats]) -> dict[str, float]:
    """Overall statistics from per-layer ones.

    - ``weight_sparsity``: zero decoded weights / all weights of latent layers.
    - ``slice_sparsity``: zero k x k kernels / all kernels of conv layers (of every layer when
      the model has no conv).
    - ``channel_sparsity``: fully-zero output channels / all output channels of latent layers.
    - ``bits_estimate``: total bits of the rounded latents under the probability model.
    """
    params = sum(s.params for s in stats)
    convs = [s for s in stats if s.group != "dense"] or stats
    slices = sum(s.slices for s in convs)
    return {
        "bits_estimate": float(sum(s.bits for s in stats)),
        "weight_sparsity": sum(s.weight_sparsity * s.params for s in stats) / max(params, 1),
        "slice_sparsity": sum(s.slice_sparsity * s.slices for s in convs) / max(slices, 1),
        "channel_sparsity": sum(s.out_channels_zero for s in stats)
        / max(sum(s.out_channels for s in stats), 1),
    }


@torch.no_grad()
def plain_layer_stats(net, bits: dict[str, float] | None = None) -> list[LayerStats]:
    """:class:`LayerStats` of a plain network's conv and linear layers (``bits`` per layer
    when known, e.g. from quantization; else 32 per weight)."""
    from lilnetx.core.latent import group_key
    from lilnetx.layers import convertible_layers

    out = []
    for name, layer in convertible_layers(net):
        w = layer.weight.detach().cpu()
        shape = list(w.shape)
        w2 = w.reshape(shape[0], shape[1], -1)
        slice_zero = (w2 == 0).all(dim=2)
        sparsity = float((w == 0).float().mean())
        out.append(LayerStats(
            name=name, group=group_key(layer), shape=shape, params=w.numel(),
            slices=shape[0] * shape[1],
            bits=float(bits[name]) if bits and name in bits else 32.0 * w.numel(),
            weight_sparsity_latent=sparsity, slice_sparsity_latent=float(slice_zero.float().mean()),
            weight_sparsity=sparsity, slice_sparsity=float(slice_zero.float().mean()),
            out_channels=shape[0], out_channels_zero=int(slice_zero.all(dim=1).sum()),
            in_channels=shape[1] * _groups(layer),
            in_channels_zero=_zero_inputs(slice_zero, layer),
        ))
    return out
