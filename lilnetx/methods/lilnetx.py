"""``lilnetx``: the method of the paper. Every conv and linear weight becomes an integer latent
tensor decoded by a shared per-group decoder; training adds the latents' rate (bits under the
learned probability model) and the slice-sparsity prior to the task loss (method.md, sec. 1-5).
The file stores the latents entropy coded (under the cheapest of the integer tables of
:mod:`lilnetx.fileformat.tables`), and the decoders, biases and BatchNorm quantized to
``side_bits`` (trained straight-through, :mod:`lilnetx.core.sidequant`). What no output reads
(the channels the slim export removes) is written as zeros.

With ``init_from`` (our extension; the paper trains from scratch) the latents and decoders start
from a trained network by the rule of :mod:`lilnetx.core.init_from` (``init_levels``: the
latents' range) and training fine-tunes them; the summary adds ``init_max_weight_error`` and
``init_accuracy`` (test accuracy of the initialized network, before any training)."""

from __future__ import annotations

from torch import nn

from lilnetx.core.init_from import DEFAULT_LEVELS
from lilnetx.core.latent import DECODER_FORMS
from lilnetx.methods.base import Method, Param, register_method
from lilnetx.methods.quant import SIDE_BITS


@register_method
class LilNetX(Method):
    name = "lilnetx"
    summary = ("latent reparameterization with a learned entropy model and slice sparsity "
               "(Girish et al., ICLR 2023): rate and structured sparsity in one training run")
    params = (
        Param("init_levels", int, DEFAULT_LEVELS, "with init_from: latents start in [-L, L], L this value "
              "(finer reproduces the start more closely, at more bits)", low=1, high=4096),
        Param("decoder", str, "full", "decoder of each k x k group: full (the paper's k²xk² "
              "matrix), diagonal (one scale per kernel position) or scalar", choices=DECODER_FORMS),
        SIDE_BITS,
    )
    default_lr = 1e-2
    accepts_init = True
    init_summary: dict[str, float] | None = None

    def prepare(self, net: nn.Module, *, width: float = 1.0) -> nn.Module:
        from lilnetx.core.model import convert

        return convert(net, width=width, decoder=self.options["decoder"],
                       side_bits=self.options["side_bits"])

    def train(self, model, splits, cfg, progress, *, init=None):
        from lilnetx.train import fit

        self.init_summary = None
        if init is not None:
            self.init_summary = self.start(model, init, splits, cfg.device)
        return fit(model, splits, cfg, progress)

    def start(self, model, init, splits, device=None) -> dict[str, float]:
        """Set ``model``'s latents and decoders from the plain network ``init``; returns the
        init's largest absolute weight error and its test accuracy."""
        from lilnetx.core.init_from import latents_from_weights
        from lilnetx.core.model import decode
        from lilnetx.train import evaluate_accuracy, pick_device

        report = latents_from_weights(model, init, levels=self.options["init_levels"])
        dev = pick_device(device)
        acc = evaluate_accuracy(decode(model).to(dev), splits.test, device=dev,
                                workers=splits.workers)
        return {"init_max_weight_error": report.max_weight_error, "init_accuracy": acc}

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return dict(self.init_summary or {})

    def plain(self, model: nn.Module) -> nn.Module:
        from lilnetx.core.model import decode

        return decode(model)

    def encode(self, model: nn.Module, arch: dict) -> bytes:
        """The file of ``model`` without what no output reads: latent slices, biases and
        BatchNorm entries of the channels the slim export removes are written as zeros
        (:func:`lilnetx.deploy.unused.drop_unused`; the decoded outputs are unchanged)."""
        from lilnetx.deploy.export import example_input
        from lilnetx.deploy.unused import drop_unused
        from lilnetx.fileformat import encode_model

        arch = arch if arch is not None else getattr(model, "arch", None)
        if arch:
            model, _ = drop_unused(model, example_input(arch, batch=2))
        return encode_model(model, arch)
