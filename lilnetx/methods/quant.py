"""``quant``: dense training (or a trained start), then symmetric per-layer uniform
quantization of the conv and linear weights to ``bits``; the integers are entropy coded under
their empirical histogram (see :mod:`lilnetx.methods.quantize`). Accuracy is measured after
quantization, on exactly what the file stores."""

from __future__ import annotations

from torch import nn

from lilnetx.methods.base import Method, Param, register_method
from lilnetx.methods.dense import train_or_start
from lilnetx.methods.quantize import MAX_BITS, MIN_BITS

BITS = Param("bits", int, 8, "bits per stored weight", low=MIN_BITS, high=MAX_BITS)


class Quantized(Method):
    """A method whose trained network is quantized to :data:`BITS` before it is stored."""

    quantized: dict | None = None

    def quantize(self, model: nn.Module) -> None:
        from lilnetx.methods.quantize import apply_quantization, quantize_layers

        self.quantized = quantize_layers(model, self.options["bits"])
        apply_quantization(model, self.quantized)
        model.eval()

    def metrics(self, model: nn.Module) -> dict[str, float]:
        from lilnetx.methods.quantize import information_bits

        return {"bits_estimate": information_bits(self.quantized)} if self.quantized else {}

    def encode(self, model: nn.Module, arch: dict) -> bytes:
        from lilnetx.fileformat import encode_plain

        return encode_plain(model, arch, self.quantized)


@register_method
class Quant(Quantized):
    name = "quant"
    summary = "dense training, then uniform per-layer quantization to `bits` (entropy coded)"
    params = (BITS,)
    default_lr = 1e-3

    def train(self, model, splits, cfg, progress, *, init=None):
        result = train_or_start(model, splits, cfg, progress, init)
        self.quantize(model)
        return result
