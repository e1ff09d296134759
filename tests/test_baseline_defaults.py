"""The baselines are as well tuned as LilNetX (issue 14): their default learning rate and IMP's
default retraining reach a usable model at a small budget, and the comparison space gives every
method the same epoch budget and searches each one's learning rate.

Thresholds from ``benchmarks/baseline_lr.py`` ("Baseline defaults" in docs/benchmarks.md), seed
0, 4 epochs: dense and quant 0.81 with the new defaults (0.25 with the former lr 1e-3), imp at 90%
sparsity 0.89 (0.10 with lr 1e-3 and 3 x 1 SLR retraining epochs); the thresholds leave a margin
for other torch builds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.space import load_space
from lilnetx.experiment import RunSpec, run
from lilnetx.methods import create_method, method_class
from lilnetx.train import TrainConfig

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "compare_fashion_mnist.yaml"
BUDGET = 12


@pytest.mark.parametrize(("method", "options", "threshold"), [
    ("dense", {}, 0.7),
    ("quant", {"bits": 8}, 0.7),
    ("quant", {"bits": 4}, 0.7),
    ("imp", {"target_sparsity": 0.9}, 0.7),
], ids=["dense", "quant8", "quant4", "imp90"])
def test_default_lr_reaches_a_usable_model_in_4_epochs(method, options, threshold):
    spec = RunSpec(model="lenet5", dataset="digits", method=method, options=options,
                   train=TrainConfig(epochs=4, seed=0))  # lr=None: the method's default_lr
    out = run(spec)
    assert out.summary["accuracy"] >= threshold, (method, options, out.summary["accuracy"])
    if method == "imp":
        assert abs(out.summary["weight_sparsity"] - 0.9) <= 0.01


def test_baseline_default_lr_is_the_short_budget_one():
    for m in ("dense", "quant", "imp"):
        assert method_class(m).default_lr == pytest.approx(1e-2), m
    o = create_method("imp").options
    assert (o["phases"], o["retrain_epochs"], o["schedule"]) == (3, 4, "LLR")


def total_epochs(space, method: str) -> int:
    """Training epochs of one trial of ``method``: for imp the dense training plus every
    retraining phase (defaults from the method when the space does not fix them)."""
    fixed, searched = space.fixed(method), space.searched(method)
    assert "epochs" in fixed and "epochs" not in searched, f"{method}: epochs must be fixed"
    total = fixed["epochs"]
    if method == "imp":
        defaults = create_method("imp").options
        for key in ("phases", "retrain_epochs"):
            assert key not in searched, f"imp: {key} must be fixed (it sets the budget)"
        total += (fixed.get("phases", defaults["phases"])
                  * fixed.get("retrain_epochs", defaults["retrain_epochs"]))
    return total


def test_compare_space_validates_with_the_same_budget_for_every_method():
    space = load_space(SPACE)
    assert set(space.methods) == {"lilnetx", "imp", "quant", "dense"}
    totals = {m: total_epochs(space, m) for m in space.methods}
    assert totals == dict.fromkeys(space.methods, BUDGET), totals


def test_compare_space_searches_each_methods_lr_and_the_bit_widths():
    space = load_space(SPACE)
    for m in space.methods:
        lr = space.searched(m).get("lr")
        assert lr is not None and "loguniform" in lr, f"{m}: lr must be searched on a log range"
        lo, hi = lr["loguniform"]
        default = method_class(m).default_lr
        assert lo < default < hi and hi / lo >= 5, (m, lr)
    for m in ("imp", "quant"):
        assert space.searched(m)["bits"] == {"int": [2, 8]}, m
    lo, hi = space.searched("lilnetx")["lambda_rate"]["loguniform"]
    assert lo <= 0.3 and hi >= 30
    assert space.fixed("imp")["retrain_epochs"] * space.fixed("imp")["phases"] >= 6
