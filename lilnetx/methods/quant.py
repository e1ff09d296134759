"""``quant``: dense training (or a trained start), then symmetric per-layer uniform
quantization of the conv and linear weights to ``bits``; the integers are entropy coded under
their empirical histogram (see :mod:`lilnetx.methods.quantize`); biases and BatchNorm (folded)
are quantized to ``side_bits`` as LilNetX's are. Accuracy is measured after quantization, on
exactly what the file stores."""

from __future__ import annotations

from torch import nn

from lilnetx.methods.base import Method, Param, register_method
from lilnetx.methods.dense import train_or_start
from lilnetx.methods.quantize import MAX_BITS, MIN_BITS

BITS = Param("bits", int, 8, "bits per stored weight", low=MIN_BITS, high=MAX_BITS)
SIDE_BITS = Param("side_bits", int, 8, "bits of the stored biases, BatchNorm (folded) and "
                  "decoders: integers on a power-of-two grid; 0 keeps them float32",
                  low=0, high=16)


class Quantized(Method):
    """A method whose trained network is quantized to :data:`BITS` before it is stored."""

    quantized: dict | None = None

    def quantize(self, model: nn.Module) -> None:
        from lilnetx.core.sidequant import check_side_bits, quantize_side_state
        from lilnetx.methods.quantize import apply_quantization, quantize_layers

        self.quantized = quantize_layers(model, self.options["bits"])
        apply_quantization(model, self.quantized)
        model.eval()
        coded = {f"{name}.weight" for name in self.quantized}
        quantize_side_state(model, check_side_bits(self.options["side_bits"]), coded)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        from lilnetx.methods.quantize import information_bits

        return {"bits_estimate": information_bits(self.quantized)} if self.quantized else {}

    def encode(self, model: nn.Module, arch: dict) -> bytes:
        """The file of the quantized ``model``, without what no output reads: the weights,
        biases and BatchNorm entries of the channels the slim export removes are written as
        zeros (:func:`lilnetx.deploy.unused.drop_unused_plain`), as LilNetX's are."""
        from lilnetx.deploy.export import example_input
        from lilnetx.deploy.unused import drop_unused_plain
        from lilnetx.fileformat import encode_plain

        quantized = self.quantized
        if arch and quantized:
            model, quantized = drop_unused_plain(model, quantized, example_input(arch, batch=2))
        return encode_plain(model, arch, quantized)


@register_method
class Quant(Quantized):
    name = "quant"
    summary = "dense training, then uniform per-layer quantization to `bits` (entropy coded)"
    params = (BITS, SIDE_BITS)
    default_lr = 1e-2

    def train(self, model, splits, cfg, progress, *, init=None):
        result = train_or_start(model, splits, cfg, progress, init)
        self.quantize(model)
        return result
