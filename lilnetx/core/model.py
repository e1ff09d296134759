"""The LilNetX model: a network whose conv and linear layers are latent reparameterized.

:func:`convert` turns any ``nn.Module`` into a :class:`LilNetXModel`; :func:`decode` turns one
back into a plain network with the decoded, rounded weights.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

from lilnetx.core.entropy import FactorizedPrior
from lilnetx.core.latent import (
    DECODER_FORMS,
    GroupDecoder,
    LatentConv2d,
    LatentLayer,
    LatentLinear,
    decode_group,
    group_key,
)
from lilnetx.core.priors import _EPS as _SLICE_EPS
from lilnetx.core.sidequant import (
    DEFAULT_SIDE_BITS,
    check_side_bits,
    quantize_many_ste,
    quantize_side_state,
)
from lilnetx.errors import ConfigError
from lilnetx.layers import convertible_layers


class _SliceLasso(torch.autograd.Function):
    """``sum over layers and slices of sqrt(||row||^2 + eps)``: one row-norm pass per layer and
    one multiply per layer backward, instead of a per-layer autograd chain."""

    @staticmethod
    def forward(ctx, *latents):
        norms = torch.cat([torch.linalg.vector_norm(lat, dim=1) for lat in latents])
        norms = torch.hypot(norms, norms.new_tensor(_SLICE_EPS ** 0.5))  # sqrt(n^2 + eps)
        ctx.save_for_backward(norms, *latents)
        return norms.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        norms, *latents = ctx.saved_tensors
        inv = (grad / norms).split([lat.shape[0] for lat in latents])
        return tuple(torch._foreach_mul(latents, [v.unsqueeze(1) for v in inv]))


class _SumSq(torch.autograd.Function):
    """``sum of squares of all the given tensors`` as one autograd node (``_foreach`` kernels)."""

    @staticmethod
    def forward(ctx, *latents):
        ctx.save_for_backward(*latents)
        return torch.stack(torch._foreach_norm(latents)).square().sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return tuple(torch._foreach_mul(ctx.saved_tensors, grad * 2))


@contextmanager
def effective_side(decoders, layers=()):
    """Within the block, each decoder's forward uses its effective (quantized) weight and each
    latent layer its effective bias, all computed once on entry (one batched quantization,
    :func:`~lilnetx.core.sidequant.quantize_many_ste`, per side-information precision); the
    autograd graph sums the gradients of every layer that uses a decoder."""
    decoders = list(decoders)
    biased = [layer for layer in layers if getattr(layer, "bias", None) is not None]
    by_bits: dict[int, list[tuple[object, str, torch.Tensor]]] = {}
    for d in decoders:
        by_bits.setdefault(d.bits, []).append((d, "_effective", d.weight))
    for layer in biased:
        by_bits.setdefault(layer.decoder.bits, []).append((layer, "_effective_bias", layer.bias))
    for bits, items in by_bits.items():
        for (owner, key, _), q in zip(items, quantize_many_ste([t for *_, t in items], bits), strict=True):
            owner.__dict__[key] = q
    try:
        yield
    finally:
        for owner in (*decoders, *biased):
            owner.__dict__.pop("_effective", None)
            owner.__dict__.pop("_effective_bias", None)


class LilNetXModel(nn.Module):
    """A converted network plus its shared decoders and probability models.

    Attributes:
        net: the network, its ``nn.Conv2d``/``nn.Linear`` replaced by latent layers.
        decoders: one :class:`~lilnetx.core.latent.GroupDecoder` per kernel-shape group.
        priors: one :class:`~lilnetx.core.entropy.FactorizedPrior` per group (channels = kernel positions).

    ``forward(x)`` is the network's forward. Rates are in **bits**.
    """

    def __init__(self, net: nn.Module, decoders: nn.ModuleDict, priors: nn.ModuleDict):
        super().__init__()
        self.net = net
        self.decoders = decoders
        self.priors = priors
        self.arch: dict | None = None  # how to rebuild the network (set by lilnetx.experiment)
        self.channel_groups = None  # coupled channels (lilnetx.core.channel_prior), built once

    def forward(self, *args, **kwargs):
        # every decoder quantized once per forward, not once per layer that uses it, and the
        # decoders and biases in one batched pass; the weights of each group decoded together
        named = self.latent_layers()  # one walk of the modules per forward
        layers = [m for _, m in named]
        with effective_side(self.decoders.values(), layers):
            try:
                for m, w in self.decode_weights(named).items():
                    m.__dict__["_decoded"] = w
                return self.net(*args, **kwargs)
            finally:
                for m in layers:
                    m.__dict__.pop("_decoded", None)

    def decode_weights(self, layers: list[tuple[str, LatentLayer]] | None = None
                       ) -> dict[LatentLayer, torch.Tensor]:
        """Every latent layer's decoded weight (``weight_shape``, straight-through rounding),
        each group's in one product (:func:`~lilnetx.core.latent.decode_group`). ``layers``:
        :meth:`latent_layers`, when the caller has it."""
        out = {}
        for group in self.groups(layers).values():
            members = [m for _, m in group]
            out.update(zip(members, decode_group(members), strict=True))
        return out

    def latent_layers(self) -> list[tuple[str, LatentLayer]]:
        """``(name, layer)`` for every latent layer, in module order."""
        return [(n, m) for n, m in self.net.named_modules() if isinstance(m, LatentConv2d | LatentLinear)]

    def groups(self, layers: list[tuple[str, LatentLayer]] | None = None
               ) -> dict[str, list[tuple[str, LatentLayer]]]:
        """Latent layers by group, in module order (``layers``: :meth:`latent_layers`, when
        the caller has it)."""
        out: dict[str, list[tuple[str, LatentLayer]]] = OrderedDict()
        for name, layer in self.latent_layers() if layers is None else layers:
            out.setdefault(layer.group, []).append((name, layer))
        return out

    @property
    def side_bits(self) -> int:
        """Bits of the side information (decoders, biases, BatchNorm); 0: float32."""
        return next((d.bits for d in self.decoders.values()), 0)

    def latent_parameters(self) -> list[nn.Parameter]:
        return [layer.latent for _, layer in self.latent_layers()]

    def prior_parameters(self) -> list[nn.Parameter]:
        return list(self.priors.parameters())

    def n_rows(self) -> int:
        """Number of slices plus dense weights (the rate normalizer ``N_rows`` of sec. 5)."""
        return sum(layer.latent.shape[0] for _, layer in self.latent_layers())

    def rate_bits(self, noisy: bool | None = None, table: int | None = None) -> torch.Tensor:
        """Self-information of all latents under the priors, in **bits** (scalar tensor).

        ``noisy=True`` adds U(-1/2, 1/2) noise to the continuous latents (training proxy);
        ``noisy=False`` rounds them (the evaluation rate). Default: ``self.training``.
        ``table``: grid points of the tabulated rate (:mod:`lilnetx.core.rate_table`), used
        for the noisy rate; ``None``, and always for the rounded rate: the exact evaluation.
        """
        noisy = self.training if noisy is None else noisy
        total = None
        for group, layers in self.groups().items():
            lat = torch.cat([layer.latent for _, layer in layers], dim=0)
            if noisy:
                lat = torch.empty_like(lat).uniform_(-0.5, 0.5).add_(lat)  # one buffer, not two
            else:
                lat = torch.round(lat)
            bits = self.priors[group].rows_bits(lat, table=table if noisy else None)
            total = bits if total is None else total + bits
        if total is None:
            return torch.zeros(())
        return total

    def slice_penalty(self) -> torch.Tensor:
        """Slice group-lasso over the latents of k x k conv groups with k > 1 (sec. 4).

        The value and gradient of :func:`~lilnetx.core.priors.slice_group_lasso` summed over the
        layers, as one autograd node (:class:`_SliceLasso`).
        """
        latents = [layer.latent for _, layer in self.latent_layers() if layer.latent.shape[1] > 1]
        return _SliceLasso.apply(*latents) if latents else self._zero()

    def channel_penalty(self, example: torch.Tensor | None = None,
                        scope: str = "coupled") -> torch.Tensor:
        """The coupled-channel group prior (:mod:`lilnetx.core.channel_prior`; unitless): a
        group lasso over the latents that write or read each coupled channel. The
        channel groups are traced once, on ``example`` (a batch shaped like the input), the
        first time, in ``scope`` (:data:`lilnetx.core.channel_prior.SCOPES`); later calls
        reuse them."""
        from lilnetx.core.channel_prior import build_channel_groups, channel_group_lasso

        layers = dict(self.latent_layers())
        if self.channel_groups is None:
            if example is None:
                raise ConfigError("channel_penalty needs an example input the first time, to "
                                  "trace the network's coupled channels")
            self.channel_groups = build_channel_groups(self, example, scope)
        dev = next(iter(layers.values())).latent.device if layers else None
        if dev is not None and self.channel_groups.sizes.device != dev:
            self.channel_groups = self.channel_groups.to(dev)
        return channel_group_lasso(layers, self.channel_groups) if layers else self._zero()

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squared latents over every latent layer (one autograd node, :class:`_SumSq`)."""
        latents = self.latent_parameters()
        return _SumSq.apply(*latents) if latents else self._zero()

    def _zero(self) -> torch.Tensor:
        p = next(self.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)


def convert(
    model: nn.Module,
    *,
    boundary: int = 3,
    width: float = 1.0,
    filters: tuple[int, ...] = (3, 3, 3),
    decoder: str = "full",
    side_bits: int = DEFAULT_SIDE_BITS,
) -> LilNetXModel:
    """Reparameterize every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` in latent space.

    Args:
        model: any network; it is copied, not changed. Conv layers of any kernel size, stride,
            dilation and groups (depthwise included) are converted; other layers stay as they are.
            Linear layers inside ``nn.MultiheadAttention`` (which reads their weights directly)
            are left alone.
        boundary: ``B`` of the reference initialization (sec. 2).
        width: network width multiplier used by the reference decoder initialization.
        filters: hidden widths of the probability models.
        decoder: form of every k x k group's decoder (:data:`~lilnetx.core.latent.DECODER_FORMS`:
            ``full`` is the paper's ``k² x k²`` matrix, ``diagonal`` one scale per kernel
            position, ``scalar`` one per group).
        side_bits: precision of the side information (decoders, biases, BatchNorm, other float
            state), trained straight-through and stored as integers with a power-of-two step
            (:mod:`lilnetx.core.sidequant`); 0 keeps it float32.

    Returns a :class:`LilNetXModel` on the device of ``model``'s first parameter.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert expects a torch.nn.Module, but got {type(model).__name__}")
    if isinstance(model, LilNetXModel):
        raise ConfigError("model is already converted to LilNetX")
    check_side_bits(side_bits)
    if decoder not in DECODER_FORMS:
        raise ConfigError(f"decoder must be one of {', '.join(DECODER_FORMS)}, but got "
                          f"{decoder!r}")
    if boundary < 1 or width <= 0:
        raise ConfigError(f"boundary must be >= 1 and width > 0, but got {boundary}, {width}")
    net = copy.deepcopy(model)
    first = next(net.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    targets = convertible_layers(net)
    # The reference sets var from its widest layer (64 * width channels in a CIFAR ResNet);
    # for other networks the widest conv sets it, so no layer starts with all-zero latents.
    widest = max([m.out_channels for _, m in targets if isinstance(m, nn.Conv2d)], default=0)
    var = 24.0 / max(64.0 * width, widest) / ((2 * boundary + 1) ** 2 - 1)
    if not targets:
        raise ConfigError("model has no nn.Conv2d or nn.Linear layer to convert")
    decoders, priors = nn.ModuleDict(), nn.ModuleDict()
    for name, module in targets:
        key = group_key(module)
        rows = 1 if isinstance(module, nn.Linear) else module.kernel_size[0] * module.kernel_size[1]
        if key not in decoders:
            decoders[key] = GroupDecoder(rows, var, decoder, side_bits)
            priors[key] = FactorizedPrior(rows, filters)
        new = (LatentLinear(module, var) if isinstance(module, nn.Linear)
               else LatentConv2d(module, var))
        new.attach(decoders[key])
        _set_submodule(net, name, new)
    out = LilNetXModel(net, decoders, priors)
    return out.to(device)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ConfigError("the model itself is a single conv/linear layer; wrap it in nn.Sequential")
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def decode(model: LilNetXModel) -> nn.Module:
    """A plain network (on the CPU) with every latent layer replaced by its decoded, rounded layer.

    The weights are exactly those the compressed file stores (see ``export_weight``), and so is
    the rest of the state: with ``side_bits`` > 0 every BatchNorm is folded into its weight and
    bias and every float tensor quantized (:func:`~lilnetx.core.sidequant.quantize_side_state`).
    The copy keeps the train/eval mode of ``model.net``.
    """
    if not isinstance(model, LilNetXModel):
        raise ConfigError(f"decode expects a LilNetXModel from lilnetx.convert, got {type(model).__name__}")
    memo = {id(layer): layer.to_dense() for _, layer in model.latent_layers()}
    for d in model.decoders.values():
        memo[id(d)] = d  # never copied: dense layers do not hold decoders
    plain = copy.deepcopy(model.net, memo).cpu()
    coded = {f"{name}.weight" for name, _ in model.latent_layers()}
    return quantize_side_state(plain, model.side_bits, coded)
