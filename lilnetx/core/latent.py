"""Latent reparameterized layers and their shared linear decoders (LilNetX sec. 2).

A conv weight ``O x I/g x kh x kw`` is stored as an integer-valued latent of shape
``(O * I/g, kh*kw)`` (one row per *slice*); a linear weight ``O x I`` as ``(O * I, 1)``.
A :class:`GroupDecoder` shared by every layer of a kernel-shape group maps latent rows to weight
rows with no shift, so a zero latent slice decodes to an exactly zero kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_LATENT_BOUND = 1.0
"""Floor on the init bound ``b``: below 0.5 every latent would round to zero (a dead layer)."""


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer forward, identity gradient backward (straight-through)."""
    return x + (torch.round(x) - x).detach()


class _RoundSTE(torch.autograd.Function):
    """:func:`round_ste` as one autograd node: one pass forward (``x + (round(x) - x)`` equals
    ``round(x)`` in floating point, up to the sign of a zero), the gradient passed through."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


_BLOCKS = (4, 2)
"""Rows decoded per block-diagonal product: ``(N, k)`` rows times a ``(k, k)`` matrix runs
2-3x faster as ``(N / 4, 4 k)`` rows times ``diag(S, S, S, S)`` (a skinny product of 9 columns
is a slow BLAS case; measured on ResNet-20 w4, 2 threads: 22 to 13 ms forward and backward)."""


def _blocks(rows: int) -> int:
    return next((m for m in _BLOCKS if rows % m == 0), 1)


class _RoundDecode(torch.autograd.Function):
    """``round(latent) @ S`` with the straight-through gradient to the latent, for a ``(N, k)``
    latent and a ``(k, k)`` decoder: one node, the rounded rows and the products computed in a
    block-diagonal form (:data:`_BLOCKS`)."""

    @staticmethod
    def forward(ctx, rows, matrix):
        q = torch.round(rows)
        n, k = q.shape
        m = _blocks(n)
        big = torch.block_diag(*([matrix] * m)) if m > 1 else matrix
        ctx.save_for_backward(q, big)
        ctx.m = m
        return (q.view(n // m, k * m) @ big).view(n, k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, big = ctx.saved_tensors
        n, k = q.shape
        m = ctx.m
        g = grad.contiguous()
        g_rows = (g.view(n // m, k * m) @ big.t()).view(n, k) if ctx.needs_input_grad[0] else None
        g_matrix = None
        if ctx.needs_input_grad[1]:
            # q^T g as a batch of 16 chunks: the long reduction is slow as one BLAS call
            c = 16 if n % 16 == 0 and n >= 4096 else 1
            g_matrix = torch.bmm(q.view(c, n // c, k).transpose(1, 2),
                                 g.view(c, n // c, k)).sum(0)
        return g_rows, g_matrix


def decode_exact(latent: torch.Tensor, decoder_weight: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode integer latent rows (slices, rows) to a float32 CPU weight of ``shape``.

    ``decoder_weight``: a ``(rows, rows)`` matrix, a ``(rows,)`` diagonal or a ``(1, 1)`` scalar.
    Computed in float64 and cast once: each entry is a short sum of small-integer multiples of
    float32 numbers, exact or nearly so in float64, so the result does not depend on the BLAS
    kernel or device. Both the trained model's export and the file decoder use this function.
    """
    lat = latent.detach().cpu().double()
    w = decoder_weight.detach().cpu().double()
    out = lat @ w if w.dim() == 2 and w.shape[0] > 1 else lat * w.reshape(1, -1)
    return out.reshape(shape).float()


def group_key(module: nn.Module) -> str:
    """Name of the kernel-shape group of a conv or linear layer: ``conv3x3``, ``conv1x1``, ``dense``."""
    if isinstance(module, nn.Linear):
        return "dense"
    kh, kw = module.kernel_size
    return f"conv{kh}x{kw}"


DECODER_FORMS = ("full", "diagonal", "scalar")
"""Forms of a k x k group's decoder: the paper's ``(k², k²)`` matrix, one scale per kernel
position, or one scale for the group. Dense and 1 x 1 groups always have a scalar."""


class GroupDecoder(nn.Module):
    """Shared linear decoder of one group, with no shift.

    ``rows = k*k``: ``form="full"``, a ``(k*k, k*k)`` matrix ``S`` decodes a latent row ``r`` to
    ``r @ S``; ``"diagonal"``, a ``(k*k,)`` vector ``d`` decodes it to ``r * d``; ``"scalar"``
    (and always for ``rows = 1``: dense and 1x1 convs), a ``(1, 1)`` scalar ``s`` to ``s * r``.

    ``bits`` > 0: the forward pass uses the decoder quantized to ``bits``
    (:func:`lilnetx.core.sidequant.quantize`, straight-through), the values the file stores.
    """

    def __init__(self, rows: int, init_var: float, form: str = "full", bits: int = 0):
        super().__init__()
        self.rows = int(rows)
        if form not in DECODER_FORMS:
            from lilnetx.errors import ConfigError

            raise ConfigError(f"decoder must be one of {', '.join(DECODER_FORMS)}, "
                              f"but got {form!r}")
        self.form = "scalar" if self.rows == 1 else form
        self.bits = int(bits)
        if self.form == "scalar":
            # A scalar drawn from N(0, var) can start near zero and silence a layer; its expected
            # magnitude is a safer start and keeps the decoded variance the init targets.
            self.weight = nn.Parameter(torch.full((1, 1), math.sqrt(init_var)))
        elif self.form == "diagonal":
            self.weight = nn.Parameter(torch.full((self.rows,), math.sqrt(init_var)))
        else:
            # Entries ~ N(0, var / rows): a decoded entry sums `rows` products, so its variance
            # matches the scalar case and the init target 2 / fan_out (method.md sec. 2).
            self.weight = nn.Parameter(torch.randn(self.rows, self.rows) * math.sqrt(init_var / self.rows))

    def effective_weight(self) -> torch.Tensor:
        """The decoder the forward pass uses (quantized straight-through when ``bits`` > 0)."""
        from lilnetx.core.sidequant import quantize_ste

        return quantize_ste(self.weight, self.bits)

    @torch.no_grad()
    def stored_weight(self) -> torch.Tensor:
        """The decoder as the file stores it: float32 on the CPU, quantized to ``bits``."""
        from lilnetx.core.sidequant import quantize

        return quantize(self.weight.detach().float(), self.bits).cpu()

    @torch.no_grad()
    def set_from_matrix(self, matrix: torch.Tensor) -> None:
        """Set the decoder from a ``(rows, rows)`` matrix (its diagonal, or the mean of it,
        for the diagonal and scalar forms)."""
        m = matrix.to(self.weight)
        if self.form == "full":
            self.weight.copy_(m)
        elif self.form == "diagonal":
            self.weight.copy_(torch.diagonal(m))
        else:
            self.weight.copy_(torch.diagonal(m.reshape(self.rows, self.rows)).mean().reshape(1, 1))

    def forward(self, latent_rows: torch.Tensor) -> torch.Tensor:
        """(slices, rows) latent values -> (slices, rows) weight values (same dtype as input).
        Uses the effective weight that :func:`lilnetx.core.model.effective_side` computed
        for the current forward pass, when there is one."""
        w = self._weight_for(latent_rows)
        if self.form == "full":
            return latent_rows @ w
        return latent_rows * w.reshape(1, -1)

    def decode_rounded(self, latent_rows: torch.Tensor) -> torch.Tensor:
        """``self(round(latent_rows))`` with the straight-through gradient to the latent rows
        ((slices, rows) -> (slices, rows)); a full decoder in one fused node
        (:class:`_RoundDecode`)."""
        w = self._weight_for(latent_rows)
        if self.form == "full":
            return _RoundDecode.apply(latent_rows, w)
        return _RoundSTE.apply(latent_rows) * w.reshape(1, -1)

    def _weight_for(self, latent_rows: torch.Tensor) -> torch.Tensor:
        w = self.__dict__.get("_effective")
        w = w if w is not None else self.effective_weight()
        return w.to(latent_rows.dtype)


class _LatentMixin:
    """State shared by latent conv and linear layers."""

    latent: nn.Parameter
    group: str
    weight_shape: tuple[int, ...]

    def _init_latent(self, weight_shape: tuple[int, ...], fan_out: int, decoded_var: float) -> None:
        self.weight_shape = tuple(int(s) for s in weight_shape)
        rows = self.weight_shape[2] * self.weight_shape[3] if len(self.weight_shape) == 4 else 1
        slices = math.prod(self.weight_shape) // rows
        # Latents ~ U(-b, b) so that decoded weights have variance ~ 2 / fan_out (method.md sec. 2).
        b = (math.sqrt(24.0 / (decoded_var * fan_out) + 1.0) - 1.0) / 2.0
        b = max(b, MIN_LATENT_BOUND)
        self.latent = nn.Parameter(torch.empty(slices, rows).uniform_(-b, b))

    def attach(self, decoder: GroupDecoder) -> None:
        """Point this layer at its group's decoder (kept out of the module tree: it is shared)."""
        self.__dict__["_decoder"] = decoder

    @property
    def decoder(self) -> GroupDecoder:
        return self.__dict__["_decoder"]

    def latent_int(self) -> torch.Tensor:
        """The rounded latent, (slices, rows), float dtype holding integers."""
        return torch.round(self.latent.detach())

    def decoded_weight(self) -> torch.Tensor:
        """The weight used in the forward pass: rounded latent (STE) through the decoder (the
        one :func:`decode_group` computed for the whole group in this forward pass, when
        there is one)."""
        w = self.__dict__.get("_decoded")
        if w is not None:
            return w
        return self.decoder.decode_rounded(self.latent).reshape(self.weight_shape)

    @torch.no_grad()
    def export_weight(self) -> torch.Tensor:
        """Decoded rounded weight for export, float32 on the CPU.

        Computed in float64 and cast once, so the result does not depend on the BLAS kernel or
        the device: the compressed file decodes to exactly these values.
        """
        return decode_exact(self.latent_int(), self.decoder.stored_weight(), self.weight_shape)

    def effective_bias(self) -> torch.Tensor | None:
        """The bias the forward pass uses: quantized straight-through to the decoder's ``bits``
        (the side-information precision of the model), as the file stores it."""
        from lilnetx.core.sidequant import quantize_ste

        q = self.__dict__.get("_effective_bias")
        return q if q is not None else quantize_ste(self.bias, self.decoder.bits)

    @torch.no_grad()
    def _stored_bias(self) -> torch.Tensor:
        from lilnetx.core.sidequant import quantize

        return quantize(self.bias.detach().float(), self.decoder.bits).cpu()


class LatentConv2d(_LatentMixin, nn.Module):
    """A ``nn.Conv2d`` whose weight is decoded from an integer latent.

    Keeps the original's stride, padding, dilation, groups and padding mode; the bias stays float
    (quantized to the side-information ``bits`` straight-through when they are > 0).
    """

    def __init__(self, conv: nn.Conv2d, decoded_var: float):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.groups, self.padding_mode = conv.groups, conv.padding_mode
        self._reversed_padding = tuple(conv._reversed_padding_repeated_twice)
        self.group = group_key(conv)
        w = conv.weight.shape
        self._init_latent(tuple(w), fan_out=w[0] * w[2] * w[3], decoded_var=decoded_var)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.decoded_weight()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, self.effective_bias(), self.stride, 0, self.dilation,
                            self.groups)
        return F.conv2d(x, weight, self.effective_bias(), self.stride, self.padding, self.dilation,
                        self.groups)

    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding :meth:`export_weight`."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, self.bias is not None, self.padding_mode,
        )
        conv.weight.data.copy_(self.export_weight())
        if self.bias is not None:
            conv.bias.data.copy_(self._stored_bias())
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}, group={self.group}")


class LatentLinear(_LatentMixin, nn.Module):
    """A ``nn.Linear`` whose weight is ``s * latent`` (scalar decoder of the ``dense`` group)."""

    def __init__(self, linear: nn.Linear, decoded_var: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group = "dense"
        self._init_latent(tuple(linear.weight.shape), fan_out=linear.out_features,
                          decoded_var=decoded_var)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.decoded_weight(), self.effective_bias())

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding :meth:`export_weight`."""
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        lin.weight.data.copy_(self.export_weight())
        if self.bias is not None:
            lin.bias.data.copy_(self._stored_bias())
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


LatentLayer = LatentConv2d | LatentLinear


def decode_group(layers: list[LatentLayer]) -> list[torch.Tensor]:
    """The decoded weights (rounded latents through the shared decoder, straight-through) of
    ``layers``, all of one group, in one product: their latents concatenated, decoded and
    split back into each layer's ``weight_shape`` (views of one tensor). Per-layer decoding
    costs ~6 ops and 3 BLAS calls per layer."""
    if len(layers) == 1:
        return [layers[0].decoded_weight()]
    rows = torch.cat([layer.latent for layer in layers], dim=0)
    out = layers[0].decoder.decode_rounded(rows)
    pieces = out.split([layer.latent.shape[0] for layer in layers], dim=0)
    return [p.view(layer.weight_shape) for p, layer in zip(pieces, layers, strict=True)]
