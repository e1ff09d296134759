"""The baselines: dense, quant and IMP on digits, stored by the same codec family."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import lilnetx
from lilnetx import fileformat
from lilnetx.experiment import RunSpec, finalize, run
from lilnetx.methods.pruning import SCHEDULES, global_sparsity, prune_global, retrain_schedule
from lilnetx.methods.quantize import apply_quantization, quantize_layers
from lilnetx.train import TrainConfig


def spec(method, **kw):
    """A LeNet-5 digits run; keywords other than epochs and init_from are the method's own
    parameters (RunSpec.options)."""
    train = TrainConfig(epochs=kw.pop("epochs", 6), batch_size=64, lr=1e-2, seed=0)
    init = kw.pop("init_from", None)
    return RunSpec(model="lenet5", dataset="digits", method=method, train=train, options=kw,
                   init_from=init)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = run(spec("dense"))
    path = tmp_path_factory.mktemp("dense") / "dense.lnx"
    finalize(out, str(path), latency=False)
    return out, str(path)


def test_dense_is_stored_as_fp32_and_round_trips(dense_run):
    out, path = dense_run
    s = out.summary
    assert s["accuracy"] > 0.8
    assert s["weight_sparsity"] == 0
    # every weight stored as float32: the file is about the dense size
    assert 0.95 * s["dense_bytes"] < s["size_bytes"] < 1.1 * s["dense_bytes"]
    net = fileformat.load(path)
    for k, v in out.plain.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(net.state_dict()[k], v), k
    assert lilnetx.evaluate_accuracy(net, out.splits.test) == s["accuracy"]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_starting_from_the_dense_run(dense_run, bits, tmp_path):
    dense, path = dense_run
    out = run(spec("quant", bits=bits, init_from=path))
    f = tmp_path / "q.lnx"
    finalize(out, str(f), latency=False)
    s = out.summary
    # fewer bits, smaller file; the accuracy measured is that of the quantized network
    assert s["size_bytes"] < dense.summary["size_bytes"] * (bits + 2) / 32
    net = fileformat.load(str(f))
    assert lilnetx.evaluate_accuracy(net, out.splits.test) == s["accuracy"]
    for name, layer in lilnetx.core.model.convertible_layers(net):
        values = torch.unique(layer.weight)
        assert values.numel() <= 2 ** bits - 1, name
    if bits == 8:
        assert s["accuracy"] >= dense.summary["accuracy"] - 0.02


def test_quantize_is_symmetric_and_keeps_zeros():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 1.0, -1.0, 0.5]] * 3))
    q = quantize_layers(net, 3)
    sym, scale = q["0"]
    assert sym.min() == -3 and sym.max() == 3 and (sym[::4] == 0).all()
    apply_quantization(net, q)
    w = net[0].weight.detach()
    assert w[0, 0] == 0 and float(w[0, 1]) == pytest.approx(1.0)


def test_imp_reaches_the_target_and_retraining_beats_one_shot(dense_run, tmp_path):
    dense, path = dense_run
    target = 0.9
    out = run(spec("imp", epochs=6, init_from=path, target_sparsity=target, phases=3,
                   retrain_epochs=2, schedule="SLR"))
    s = out.summary
    assert abs(s["weight_sparsity"] - target) <= 0.01
    # the same sparsity in one shot, no retraining, same 8-bit storage
    one = fileformat.load(path)
    prune_global(one, target)
    assert abs(global_sparsity(one) - target) <= 0.01
    apply_quantization(one, quantize_layers(one, 8))
    one_shot = lilnetx.evaluate_accuracy(one, dense.splits.test)
    assert s["accuracy"] > one_shot + 0.02, (s["accuracy"], one_shot)
    f = tmp_path / "imp.lnx"
    finalize(out, str(f), latency=False)
    assert out.summary["size_bytes"] < dense.summary["size_bytes"] / 8
    net = fileformat.load(str(f))
    assert lilnetx.evaluate_accuracy(net, out.splits.test) == s["accuracy"]
    assert abs(global_sparsity(net) - target) <= 0.01


def test_imp_trains_dense_first_when_no_start_is_given():
    out = run(spec("imp", epochs=2, target_sparsity=0.5, phases=1, retrain_epochs=1,
                   schedule="FT"))
    assert abs(out.summary["weight_sparsity"] - 0.5) <= 0.01
    epochs = [row["epoch"] for row in out.result.history]
    assert epochs == [1, 2, 3]  # 2 dense epochs, then 1 retraining epoch


@pytest.mark.parametrize("name", SCHEDULES)
def test_retraining_schedules(name):
    f = retrain_schedule(name, 1e-2)
    lrs = [f(i, 100) for i in range(100)]
    assert all(0 <= v <= 1e-2 + 1e-12 for v in lrs)
    if name == "FT":
        assert len(set(lrs)) == 1
    else:
        assert lrs[0] < lrs[9] and lrs[-1] < 0.1 * max(lrs)


def test_bad_method_parameters():
    with pytest.raises(lilnetx.ConfigError, match="bits"):
        spec("quant", bits=1).validate()
    with pytest.raises(lilnetx.ConfigError, match="target_sparsity"):
        spec("imp", target_sparsity=1.0).validate()
    with pytest.raises(lilnetx.ConfigError, match="schedule"):
        spec("imp", schedule="WARM").validate()
    with pytest.raises(lilnetx.ConfigError, match="init_from"):
        spec("lilnetx", init_from="x.lnx").validate()


def test_init_from_must_match_the_model(dense_run):
    _, path = dense_run
    bad = RunSpec(model="mlp", dataset="digits", method="quant", init_from=path,
                  train=TrainConfig(epochs=1))
    with pytest.raises(lilnetx.ConfigError, match="init_from"):
        run(bad)


def test_cli_train_methods(tmp_path, capsys):
    from explorer.cli import main

    path = tmp_path / "i.lnx"
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--method", "imp",
                 "--epochs", "1", "--target-sparsity", "0.7", "--phases", "1",
                 "--retrain-epochs", "1", "--lr", "0.01", "--out", str(path), "--no-latency",
                 "--json"]) == 0
    import json

    s = json.loads(capsys.readouterr().out)
    assert s["method"] == "imp" and abs(s["weight_sparsity"] - 0.7) <= 0.01
    assert os.path.getsize(path) == s["size_bytes"]
    assert main(["train", "--dataset", "digits", "--method", "quant", "--bits", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bits" in err[0]


def test_copy_of_plain_network_is_independent(dense_run):
    dense, _ = dense_run
    net = copy.deepcopy(dense.plain)
    prune_global(net, 0.5)
    assert global_sparsity(dense.plain) == 0
