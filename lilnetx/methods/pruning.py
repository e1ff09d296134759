"""Iterative magnitude pruning with retraining ("Back to Basics", Zimmer et al. 2021).

Start from a trained dense network; in each of ``phases`` phases prune the smallest-magnitude
weights globally over all conv and linear layers (BatchNorm and biases excluded) so that after
phase j the overall sparsity is ``1 - (1 - s)^(j / J)``, then retrain with the chosen schedule
while the pruned weights stay zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lilnetx.data import DataSplits
from lilnetx.errors import ConfigError
from lilnetx.layers import convertible_layers
from lilnetx.train import TrainConfig, TrainResult, base_lr, fit

SCHEDULES = ("FT", "SLR", "CLR", "LLR")
"""Retraining schedules: FT constant at the last training lr (1% of the peak, where the
cosine schedule ends); SLR the training schedule (10% warmup, cosine) compressed into the
retraining budget; CLR 10% warmup then cosine; LLR 10% warmup then linear to 0. With a cosine
training schedule SLR and CLR coincide."""


def retrain_schedule(name: str, peak: float) -> Callable[[int, int], float]:
    """Learning rate at ``(step, total)`` of a retraining phase."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown retraining schedule {name!r}; choose one of: "
                          f"{', '.join(SCHEDULES)}")
    if name == "FT":
        return lambda step, total: 0.01 * peak

    def warm_then(step: int, total: int) -> float:
        warm = max(1, int(0.1 * total))
        if step < warm:
            return peak * (step + 1) / warm
        t = min((step - warm) / max(total - warm, 1), 1.0)
        if name == "LLR":
            return peak * (1.0 - t)
        return 0.5 * peak * (1.0 + math.cos(math.pi * t))

    return warm_then


def global_sparsity(net: nn.Module) -> float:
    """Fraction of zero weights over all conv and linear weights."""
    layers = [m.weight for _, m in convertible_layers(net)]
    zeros = sum(int((w == 0).sum()) for w in layers)
    return zeros / max(sum(w.numel() for w in layers), 1)


@torch.no_grad()
def prune_global(net: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude weights so that ``sparsity`` of all conv/linear weights are
    zero (already-zero weights count); returns the keep-masks by layer name."""
    layers = convertible_layers(net)
    flat = torch.cat([m.weight.detach().abs().flatten().cpu() for _, m in layers])
    k = int(round(sparsity * flat.numel()))
    masks = {}
    if k <= 0:
        return {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers}
    order = torch.argsort(flat, stable=True)  # ties broken by position: exactly k pruned
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    start = 0
    for name, m in layers:
        n = m.weight.numel()
        mask = keep[start:start + n].reshape(m.weight.shape).to(m.weight.device)
        m.weight.mul_(mask)
        masks[name] = mask
        start += n
    return masks


def imp(net: nn.Module, splits: DataSplits, cfg: TrainConfig, *, target_sparsity: float,
        phases: int = 3, retrain_epochs: int = 4, schedule: str = "LLR",
        progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Prune-and-retrain phases on an already trained ``net`` (in place).

    Returns the history of all retraining epochs, with ``sparsity`` after each phase.
    """
    if not 0 <= target_sparsity < 1:
        raise ConfigError(f"target_sparsity must be in [0, 1), but got {target_sparsity}")
    if not isinstance(phases, int) or phases < 1:
        raise ConfigError(f"phases must be a positive integer, but got {phases!r}")
    if not isinstance(retrain_epochs, int) or retrain_epochs < 0:
        raise ConfigError(f"retrain_epochs must be a non-negative integer, got {retrain_epochs!r}")
    sched = retrain_schedule(schedule, base_lr(net, cfg))
    result = TrainResult()
    layers = dict(convertible_layers(net))
    for j in range(1, phases + 1):
        goal = 1.0 - (1.0 - target_sparsity) ** (j / phases)
        masks = prune_global(net, goal)

        def reapply(masks=masks):
            with torch.no_grad():
                for name, mask in masks.items():
                    layers[name].weight.mul_(mask)

        if retrain_epochs > 0:
            phase_cfg = TrainConfig(**{**cfg.as_dict(), "epochs": retrain_epochs,
                                       "seed": cfg.seed + j})
            res = fit(net, splits, phase_cfg, progress, schedule=sched, after_step=reapply,
                      epoch_offset=cfg.epochs + (j - 1) * retrain_epochs)
            for row in res.history:
                row["phase"] = j
            result.history += res.history
            result.seconds += res.seconds
        if result.history:
            result.history[-1]["sparsity"] = global_sparsity(net)
    return result
