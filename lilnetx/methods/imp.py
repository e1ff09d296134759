"""``imp``: iterative magnitude pruning with retraining ("Back to Basics", Zimmer et al. 2021;
method.md sec. 7) from a dense network, then the nonzeros quantized to ``bits``; the
entropy-coded zero symbol is the sparsity pattern."""

from __future__ import annotations

from lilnetx.methods.base import Param, register_method
from lilnetx.methods.dense import train_or_start
from lilnetx.methods.pruning import SCHEDULES, imp
from lilnetx.methods.quant import BITS, SIDE_BITS, Quantized


@register_method
class IMP(Quantized):
    name = "imp"
    summary = ("iterative global magnitude pruning with retraining, nonzeros quantized to "
               "`bits` (Zimmer et al. 2021)")
    params = (
        BITS,
        Param("target_sparsity", float, 0.9, "final fraction of pruned weights", low=0.0,
              high=1.0, high_open=True),
        Param("phases", int, 3, "prune-retrain phases", low=1, high=100),
        Param("retrain_epochs", int, 4, "retraining epochs per phase", low=0, high=10_000),
        Param("schedule", str, "LLR", "retraining learning-rate schedule", choices=SCHEDULES),
        SIDE_BITS,
    )
    default_lr = 1e-2
    """Peak learning rate of the dense training and of every retraining phase: LLR restarts
    there and decays linearly to 0, as Zimmer et al. retrain (from a high initial rate, for
    enough epochs). LeNet-5 on digits at 90% sparsity after 4 dense epochs: 86% with these
    defaults, 10% with the former 1e-3 and 3 x 1 SLR epochs (median of 3 seeds;
    ``benchmarks/baseline_lr.py``). 2e-2 and 3e-2 do as well or better on LeNet-5 but train
    ResNet-20 on digits worse (dense 50%/83% at 2e-2 vs 91%/92% at
    1e-2, seeds 0/1); the same rate as ``dense`` keeps the pretraining a dense run."""

    def train(self, model, splits, cfg, progress, *, init=None):
        result = train_or_start(model, splits, cfg, progress, init)
        o = self.options
        res = imp(model, splits, cfg, target_sparsity=o["target_sparsity"], phases=o["phases"],
                  retrain_epochs=o["retrain_epochs"], schedule=o["schedule"], progress=progress)
        result.history += res.history
        result.seconds += res.seconds
        self.quantize(model)
        return result
