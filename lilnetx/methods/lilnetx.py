"""``lilnetx``: the method of the paper. Every conv and linear weight becomes an integer latent
tensor decoded by a shared per-group decoder; training adds the latents' rate (bits under the
learned probability model) and the slice-sparsity prior to the task loss (method.md, sec. 1-5).
The file stores the latents entropy coded under the learned model."""

from __future__ import annotations

from torch import nn

from lilnetx.methods.base import Method, register_method


@register_method
class LilNetX(Method):
    name = "lilnetx"
    summary = ("latent reparameterization with a learned entropy model and slice sparsity "
               "(Girish et al., ICLR 2023): rate and structured sparsity in one training run")
    default_lr = 1e-2
    accepts_init = False

    def prepare(self, net: nn.Module, *, width: float = 1.0) -> nn.Module:
        from lilnetx.core.model import convert

        return convert(net, width=width)

    def train(self, model, splits, cfg, progress, *, init=None):
        from lilnetx.train import fit

        return fit(model, splits, cfg, progress)

    def plain(self, model: nn.Module) -> nn.Module:
        from lilnetx.core.model import decode

        return decode(model)

    def encode(self, model: nn.Module, arch: dict) -> bytes:
        from lilnetx.fileformat import encode_model

        return encode_model(model, arch)
