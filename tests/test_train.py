"""Training with the joint loss: the lambdas move rate and sparsity the right way.

Short seeded runs (a few thousand Fashion-MNIST images, one epoch): the tests assert directions,
never exact numbers.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import lilnetx
from lilnetx import ConfigError, RunSpec, TrainConfig, TrainingDiverged
from lilnetx.train import LOG_EVERY, make_optimizers

SUMMARY_KEYS = {"accuracy", "val_accuracy", "bits_estimate", "weight_sparsity", "slice_sparsity",
                "channel_sparsity", "params", "dense_bytes", "train_seconds", "epochs"}


def _run(root: str, limit: int = 2000, **train) -> lilnetx.experiment.RunOutcome:
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 64, "seed": 0, **train})
    # A small validation split: each run also evaluates the fixed 10000-image test split.
    return lilnetx.run(RunSpec(model="lenet5", dataset="fashion_mnist", data_root=root,
                               limit=limit, val_fraction=0.02, train=cfg))


def _lenet_digits() -> lilnetx.LilNetXModel:
    return lilnetx.convert(lilnetx.create_model("lenet5", in_channels=1, image_size=8,
                                                num_classes=10))


@pytest.mark.slow
def test_raising_lambda_rate_lowers_the_bits(fashion_mnist_root):
    low = _run(fashion_mnist_root, limit=1000, lambda_rate=0.0)
    high = _run(fashion_mnist_root, limit=1000, lambda_rate=1.0)
    for out in (low, high):
        assert SUMMARY_KEYS <= set(out.summary)
        assert math.isfinite(out.summary["bits_estimate"]) and out.summary["bits_estimate"] > 0
        # The reported rate is the evaluation rate (rounded latents) of the final model.
        assert out.summary["bits_estimate"] == pytest.approx(
            out.result.history[-1]["bits_estimate"], rel=1e-5)
    assert high.summary["bits_estimate"] < 0.999 * low.summary["bits_estimate"]
    # Same data, same seed: only the rate term differs, so the prior fits the latents only
    # when the rate is in the loss.
    assert low.summary["params"] == high.summary["params"]


@pytest.mark.slow
def test_raising_lambda_sparsity_raises_slice_sparsity(fashion_mnist_root):
    # A higher lr without warmup so the latents can travel to zero within one short epoch.
    common = dict(lr=0.03, warmup_epochs=0.0)
    low = _run(fashion_mnist_root, lambda_sparsity=0.0, **common)
    high = _run(fashion_mnist_root, lambda_sparsity=1.0, **common)
    assert high.summary["slice_sparsity"] > low.summary["slice_sparsity"] + 0.3
    assert high.summary["weight_sparsity"] > low.summary["weight_sparsity"]
    assert high.summary["channel_sparsity"] >= low.summary["channel_sparsity"]
    convs = [s for s in high.layers if s.group != "dense"]
    assert convs and any(s.slice_sparsity_latent > 0.3 for s in convs)
    for s in high.layers:
        # A zero latent slice is a zero kernel; the statistics agree with the weights.
        assert s.slice_sparsity >= s.slice_sparsity_latent
        assert 0.0 <= s.weight_sparsity <= 1.0 and 0.0 <= s.slice_sparsity <= 1.0
        assert 0 <= s.out_channels_zero <= s.out_channels
    for (name, layer), s in zip(high.model.latent_layers(), high.layers, strict=True):
        assert s.name == name
        w = layer.export_weight()
        zero_kernels = (w.reshape(w.shape[0], w.shape[1], -1) == 0).all(dim=2)
        assert s.slice_sparsity == pytest.approx(float(zero_kernels.float().mean()))


@pytest.mark.slow
def test_seeded_run_is_reproducible(fashion_mnist_root):
    a = _run(fashion_mnist_root, limit=500)
    b = _run(fashion_mnist_root, limit=500)
    sa = {k: v for k, v in a.summary.items() if k != "train_seconds"}
    sb = {k: v for k, v in b.summary.items() if k != "train_seconds"}
    assert sa == sb
    for (_, la), (_, lb) in zip(a.model.latent_layers(), b.model.latent_layers(), strict=True):
        assert torch.equal(la.latent, lb.latent)
    other = _run(fashion_mnist_root, limit=500, seed=1)
    assert other.summary["bits_estimate"] != a.summary["bits_estimate"]


def test_lilnetx_lenet5_learns_digits():
    out = lilnetx.run(RunSpec(model="lenet5", dataset="digits",
                              train=TrainConfig(epochs=3, batch_size=64, seed=0)))
    assert out.summary["accuracy"] > 0.6  # chance is 0.1
    ce = [row["train_ce"] for row in out.result.history]
    assert ce[-1] < ce[0]
    assert isinstance(out.model, lilnetx.LilNetXModel)
    # The measured network is the decoded one: plain layers with the exported weights.
    assert not any(isinstance(m, lilnetx.LatentConv2d | lilnetx.LatentLinear)
                   for m in out.plain.modules())
    assert lilnetx.evaluate_accuracy(out.plain, out.splits.test) == out.summary["accuracy"]


def test_plain_module_trains_as_the_dense_reference(fashion_mnist_root):
    splits = lilnetx.create_dataset("fashion_mnist", fashion_mnist_root, limit=2000)
    net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
    before = lilnetx.evaluate_accuracy(net, splits.val)
    progress = []
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2)
    result = lilnetx.fit(net, splits, cfg, progress.append)
    after = lilnetx.evaluate_accuracy(net, splits.val)
    assert after > 0.5 and after > before + 0.2
    (row,) = result.history
    assert "bits_estimate" not in row and "train_bits" not in row
    assert row["val_accuracy"] == pytest.approx(after)
    steps = [e for e in progress if e["event"] == "step"]
    n = math.ceil(2000 / 64)  # steps of the epoch; the loss is read every LOG_EVERY steps
    assert [e["step"] for e in steps] == list(range(1, n + 1))
    read = [e["step"] for e in steps if e["loss"] is not None]
    assert read == sorted({1, *range(LOG_EVERY, n + 1, LOG_EVERY), n})
    assert all(e["bits"] is None and e["steps"] == n for e in steps)
    assert [e["event"] for e in progress].count("epoch") == 1
    assert not net.training  # fit leaves the model in eval mode


@pytest.mark.parametrize("name", ["lambda_rate", "lambda_sparsity", "lambda_l2"])
@pytest.mark.parametrize("value", [-1e-6, -1.0, float("nan"), float("inf")])
def test_train_config_rejects_bad_lambdas(name, value):
    with pytest.raises(ConfigError, match=name) as e:
        TrainConfig(**{name: value}).validate()
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(("field", "value"), [
    ("epochs", 0), ("epochs", 1.5), ("batch_size", -3), ("lr", 0.0), ("lr", -1e-2),
    ("prior_lr", -1.0), ("warmup_epochs", -1.0),
])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


def test_train_config_defaults_are_the_reference_ones():
    cfg = TrainConfig().validate()
    assert (cfg.prior_lr, cfg.lambda_rate, cfg.lambda_sparsity, cfg.lambda_l2) == \
        (1e-4, 1e-4, 1e-6, 1e-6)
    assert TrainConfig(lambda_rate=0, lambda_sparsity=0, lambda_l2=0).validate()
    # Reference optimizers of a LilNetX model: Adam at 1e-2 (network), 1e-4 (priors).
    net_opt, prior_opt = make_optimizers(_lenet_digits(), cfg)
    assert isinstance(net_opt, torch.optim.Adam) and isinstance(prior_opt, torch.optim.Adam)
    assert [g["lr"] for g in net_opt.param_groups] == [1e-2]
    assert [g["lr"] for g in prior_opt.param_groups] == [1e-4]


def test_fit_validates_before_training(digits):
    model = _lenet_digits()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="lambda_rate"):
        lilnetx.fit(model, digits, TrainConfig(lambda_rate=-1.0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="unknown method"):
        RunSpec(method="magic").validate()


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_nan_in_a_latent_raises_training_diverged(digits):
    model = _lenet_digits()
    with torch.no_grad():
        model.latent_layers()[1][1].latent[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1") as e:
        lilnetx.fit(model, digits, TrainConfig(epochs=1, batch_size=64))
    assert isinstance(e.value, lilnetx.LilNetXError)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_huge_learning_rate_raises_training_diverged(digits):
    model = _lenet_digits()
    with pytest.raises(TrainingDiverged, match="lower lr"):
        lilnetx.fit(model, digits, TrainConfig(epochs=2, batch_size=64, lr=1e6,
                                               warmup_epochs=0.0))


def test_fit_alone_is_reproducible_from_the_config_seed(digits):
    model = _lenet_digits()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainConfig(epochs=1, batch_size=128, seed=3)
    lilnetx.fit(a, digits, cfg)
    torch.rand(7)  # unrelated use of the global RNG between the two runs
    lilnetx.fit(b, digits, cfg)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
