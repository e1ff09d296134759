"""``dense``: plain training of the uncompressed network, stored as float32: the reference
point of every front."""

from __future__ import annotations

from torch import nn

from lilnetx.methods.base import Method, register_method


def train_or_start(model: nn.Module, splits, cfg, progress, init: nn.Module | None):
    """Train ``model`` from scratch, or take the trained state of ``init`` (no training)."""
    from lilnetx.train import TrainResult, fit

    if init is None:
        return fit(model, splits, cfg, progress)
    model.load_state_dict(init.state_dict(), strict=False)
    return TrainResult()


@register_method
class Dense(Method):
    name = "dense"
    summary = "plain training, float32 file: the uncompressed reference"
    default_lr = 1e-2
    """Adam's peak learning rate (warmup, cosine to 0). 1e-3 is too small for a short run:
    LeNet-5 on digits reaches 25% after 4 epochs at 1e-3 and 81% at 1e-2 (median of 3 seeds;
    ``benchmarks/baseline_lr.py``, "Baseline defaults" in docs/benchmarks.md)."""

    def train(self, model, splits, cfg, progress, *, init=None):
        return train_or_start(model, splits, cfg, progress, init)

    def encode(self, model: nn.Module, arch: dict) -> bytes:
        from lilnetx.fileformat import encode_plain

        return encode_plain(model, arch)
