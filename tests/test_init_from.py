"""Pretrained starts (init_from) for every method: state dicts, safetensors, .lnx files, the
refusals, and the LilNetX init that reproduces a trained network before any training."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lilnetx
from lilnetx.core import safetensors_io
from lilnetx.core.init_from import latents_from_weights, match_state_dict, read_state_dict
from lilnetx.experiment import RunSpec, finalize, run
from lilnetx.train import TrainConfig


def spec(method, init_from=None, epochs=1, **options):
    return RunSpec(model="lenet5", dataset="digits", method=method, init_from=init_from,
                   train=TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, seed=0),
                   options=options)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A trained dense LeNet-5 on digits and its weights as .pt, .safetensors and .lnx."""
    out = run(spec("dense", epochs=4))
    d = tmp_path_factory.mktemp("start")
    state = out.plain.state_dict()
    torch.save(state, d / "dense.pt")
    safetensors_io.write_safetensors(state, d / "dense.safetensors")
    finalize(out, str(d / "dense.lnx"), latency=False)
    return out, {ext: str(d / f"dense.{ext}") for ext in ("pt", "safetensors", "lnx")}


def _same_weights(net: nn.Module, state: dict) -> None:
    got = net.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("ext", ["pt", "safetensors", "lnx"])
def test_dense_starts_exactly_from_every_kind_of_file(dense, ext):
    out, paths = dense
    start = run(spec("dense", paths[ext]))
    _same_weights(start.plain, out.plain.state_dict())
    assert start.summary["accuracy"] == out.summary["accuracy"]


def test_quant_and_imp_start_from_a_state_dict(dense):
    out, paths = dense
    q = run(spec("quant", paths["pt"], bits=8))
    assert q.summary["accuracy"] >= out.summary["accuracy"] - 0.02
    from lilnetx.core.sidequant import step_exponent

    for k, v in out.plain.state_dict().items():
        step = float(v.abs().max()) / 127
        if not k.endswith("weight"):  # side information: 8 bits on a power-of-two grid
            step = 2.0 ** step_exponent(float(v.abs().max()), 8)
        assert float((q.plain.state_dict()[k] - v).abs().max()) <= step / 2 + 1e-6, k
    imp = run(spec("imp", paths["pt"], target_sparsity=0.5, phases=1, retrain_epochs=1))
    assert abs(imp.summary["weight_sparsity"] - 0.5) <= 0.01
    assert [row["epoch"] for row in imp.result.history] == [2]  # no dense training first


@pytest.mark.parametrize("ext", ["pt", "lnx"])
def test_lilnetx_fine_tunes_from_a_start(dense, ext):
    out, paths = dense
    ft = run(RunSpec(model="lenet5", dataset="digits", method="lilnetx", init_from=paths[ext],
                     train=TrainConfig(epochs=1, batch_size=64, lr=1e-3, seed=0)))
    s = ft.summary
    assert abs(s["init_accuracy"] - out.summary["accuracy"]) <= 0.01
    assert s["init_max_weight_error"] < 0.05
    assert s["accuracy"] >= out.summary["accuracy"] - 0.05
    assert len(ft.result.history) == 1  # and then it trained


def test_lilnetx_init_reproduces_the_dense_network_before_training(dense):
    out, paths = dense
    state = read_state_dict(paths["pt"])
    top = max(float(v.abs().max()) for k, v in state.items() if k.endswith("weight"))
    net = lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10)
    errors = {}
    for levels in (15, 63):
        model = lilnetx.convert(net, side_bits=0)  # float32 side information: copied exactly
        report = latents_from_weights(model, state, levels=levels)
        plain = lilnetx.decode(model)
        acc = lilnetx.evaluate_accuracy(plain, out.splits.test)
        assert abs(acc - out.summary["accuracy"]) <= 0.01, (levels, acc)
        for _, layer in model.latent_layers():  # integer latents in [-L, L]
            lat = layer.latent.detach()
            assert torch.equal(lat, torch.round(lat)) and float(lat.abs().max()) <= levels
        got = plain.state_dict()
        worst = max(float((got[k] - v).abs().max()) for k, v in state.items())
        assert worst == pytest.approx(report.max_weight_error)
        assert worst < 2 * top / levels  # about the grid's half step (the LS refit moves it)
        for k, v in state.items():
            if not k.endswith("weight"):
                assert torch.equal(got[k], v), k  # biases copied exactly
        errors[levels] = worst
    assert errors[63] < errors[15] / 2


def test_non_weight_state_is_copied_exactly():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    net[1].num_batches_tracked.fill_(7)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    model = lilnetx.convert(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(36, 5)),
                            side_bits=0)  # float32 side information: copied exactly
    report = latents_from_weights(model, net, levels=127)
    assert set(report.groups) == {"conv3x3", "conv1x1", "dense"}
    got = lilnetx.decode(model).state_dict()
    for k, v in state.items():
        if k.endswith("weight") and v.dim() != 1:
            assert float((got[k] - v).abs().max()) < 0.02 * float(v.abs().max()), k
        else:
            assert torch.equal(got[k], v), k


def test_wrapped_checkpoints_and_module_prefixes(dense, tmp_path):
    out, _ = dense
    state = out.plain.state_dict()
    for i, obj in enumerate([{"state_dict": {f"module.{k}": v for k, v in state.items()},
                              "epoch": 3}, {"model": state, "optimizer": {"lr": 0.1}}]):
        path = tmp_path / f"ckpt{i}.pth"
        torch.save(obj, path)
        got = read_state_dict(str(path))
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    start = run(spec("dense", str(tmp_path / "ckpt0.pth")))
    _same_weights(start.plain, state)


def test_a_pickled_module_is_refused(dense, tmp_path):
    out, _ = dense
    path = tmp_path / "whole.pt"
    torch.save(out.plain, path)
    with pytest.raises(lilnetx.ConfigError, match=r"model\.state_dict\(\)"):
        run(spec("lilnetx", str(path)))


def test_mismatched_state_dicts_are_refused_naming_the_key(dense, tmp_path):
    out, _ = dense
    state = out.plain.state_dict()
    key = "1.weight"
    assert key in state
    wrong = dict(state)
    wrong[key] = torch.zeros(7, 3)
    torch.save(wrong, tmp_path / "shape.pt")
    with pytest.raises(lilnetx.ConfigError) as e:
        run(spec("dense", str(tmp_path / "shape.pt")))
    msg = str(e.value)
    assert "init_from" in msg and key in msg and "(7, 3)" in msg
    assert str(tuple(state[key].shape)) in msg and len(msg) < 300
    with pytest.raises(lilnetx.ConfigError, match=r"'1\.bias'.*not in the file"):
        match_state_dict({k: v for k, v in state.items() if k != "1.bias"}, out.plain)
    extra = {**state, **{f"extra{i}.weight": torch.zeros(1) for i in range(50)}}
    with pytest.raises(lilnetx.ConfigError, match=r"'extra0\.weight'.*unexpected 50") as e:
        match_state_dict(extra, out.plain)
    assert len(str(e.value)) < 300
    mlp = RunSpec(model="mlp", dataset="digits", method="lilnetx",
                  init_from=str(tmp_path / "shape.pt"), train=TrainConfig(epochs=1))
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(lilnetx.ConfigError, match="init_from.*mlp"):
        run(mlp)


def test_bad_start_paths_and_options(tmp_path):
    with pytest.raises(lilnetx.ConfigError, match="init_from.*no such file"):
        spec("lilnetx", str(tmp_path / "missing.pt")).validate()
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(lilnetx.ConfigError, match=r"init_from.*\.safetensors"):
        spec("quant", str(tmp_path / "w.npz")).validate()
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(lilnetx.ConfigError, match="init_from"):
        read_state_dict(str(tmp_path / "junk.pt"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(lilnetx.ConfigError, match="init_levels"):
        spec("lilnetx", str(tmp_path / "plain.pt"), init_levels=0).validate()
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(lilnetx.ConfigError, match="not a state dict"):
        read_state_dict(str(tmp_path / "list.pt"))


def test_safetensors_reader_round_trip_and_bounds(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16),
               "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "d": torch.randn(2, 2).half(), "e": torch.zeros(0, 3), "f": torch.tensor(1.5)}
    path = tmp_path / "t.safetensors"
    safetensors_io.write_safetensors(tensors, path)
    for reader in (safetensors_io._read, safetensors_io.read_safetensors):
        got = reader(str(path))
        assert set(got) == set(tensors)
        for k, v in tensors.items():
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])

    def refused(blob: bytes, why: str):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(lilnetx.ConfigError, match=why):
            safetensors_io._read(str(bad))

    def with_header(h: dict, body: bytes = data[8 + n:]) -> bytes:
        text = json.dumps(h).encode()
        return len(text).to_bytes(8, "little") + text + body

    refused(b"\x01\x02", "shorter")
    refused((1 << 40).to_bytes(8, "little") + b"{}", "header length")
    refused(data[:8] + b"\xff" * n + data[8 + n:], "JSON")
    refused(with_header({**header, "a": {**header["a"], "data_offsets": [0, 10 ** 9]}}),
            "outside")
    refused(with_header({**header, "a": {**header["a"], "shape": [3, 5]}}), "needs")
    refused(with_header({**header, "a": {**header["a"], "dtype": "F7"}}), "dtype")
    refused(with_header(header, data[8 + n:] + b"\0" * 4), "belong to no tensor")
    refused(with_header({**header, "g": dict(header["a"])}), "overlaps")


def test_cli_train_from_a_state_dict(dense, capsys):
    from explorer.cli import main

    out, paths = dense
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--method", "lilnetx",
                 "--init-from", paths["safetensors"], "--epochs", "1", "--lr", "0.001",
                 "--init-levels", "31", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert abs(s["init_accuracy"] - out.summary["accuracy"]) <= 0.01
    assert s["init_max_weight_error"] < 0.03


def test_search_space_init_from_reaches_each_trial(tmp_path):
    """YAML `init_from` (top level or per method), relative to the YAML's folder, reaches the
    trials' RunSpec; a missing file is refused by the preflight, naming the field."""
    from explorer.preflight import check_starts
    from explorer.space import load_space
    from explorer.trial import _spec
    from lilnetx.errors import ConfigError

    torch.save({}, tmp_path / "start.pt")
    (tmp_path / "s.yaml").write_text(
        "model: lenet5\ndataset: digits\nobjectives: {accuracy: max, size_bytes: min}\n"
        "init_from: start.pt\nmethods:\n  lilnetx: {params: {lambda_rate: 1.0}}\n"
        "  dense: {init_from: other.pt}\n")
    space = load_space(tmp_path / "s.yaml")
    assert space.methods["lilnetx"]["init_from"] == str(tmp_path / "start.pt")
    ctx = {"model": "lenet5", "dataset": "digits", "method": "lilnetx", "fixed": {},
           "init_from": space.methods["lilnetx"]["init_from"]}
    spec, _ = _spec(ctx, {"lambda_rate": 1.0})
    assert spec.init_from == str(tmp_path / "start.pt")
    with pytest.raises(ConfigError, match=r"^methods\.dense\.init_from: .*other\.pt"):
        check_starts(space)
