"""Tests of the .lnx file format: exact round trips for every model, inspect, evaluate, no pickle.

Every registered model (and a torchvision model with depthwise convs and squeeze-excitation) is
built the way a run builds it, given random integer latents (with zero slices, an all-zero kernel
position and outliers), random biases and BatchNorm state, saved and loaded: the loaded network
must hold bit for bit the tensors of ``lilnetx.decode(model)`` and compute the same outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lilnetx
from lilnetx import FormatError, fileformat
from lilnetx.data import DataInfo
from lilnetx.experiment import RunSpec, build, finalize
from lilnetx.fileformat import archspec, report

# model -> (channels, image size, width); other registered models get DEFAULT
SHAPES = {
    "mlp": (1, 8, 1.0),
    "lenet5": (1, 8, 1.0),
    "resnet20": (3, 32, 1.0),  # ~270k latents: the coding-efficiency check applies
    "vgg16": (3, 32, 0.25),
    "tv:mobilenet_v3_small": (3, 32, 1.0),
}
DEFAULT = (3, 16, 0.5)
MODELS = [*lilnetx.model_names(),
          pytest.param("tv:mobilenet_v3_small", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP spinning makes small ops 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def splits_for(channels: int, size: int) -> SimpleNamespace:
    """What `experiment.build` reads of a DataSplits: its DataInfo."""
    info = DataInfo("synthetic", channels, size, size, 10, (0.5,) * channels, (0.25,) * channels)
    return SimpleNamespace(info=info)


def randomize(model: lilnetx.LilNetXModel, seed: int = 0) -> None:
    """Random integer latents (zero slices, one all-zero kernel position per multi-row group,
    outliers), biases, BatchNorm affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (_, layer) in enumerate(model.latent_layers()):
            lat = layer.latent
            scale = [0.3, 1.0, 3.0][i % 3]
            noise = torch.empty(lat.shape).exponential_(1.0 / scale, generator=g)
            sign = torch.randint(0, 2, lat.shape, generator=g) * 2 - 1
            new = (noise * sign).round()
            new[torch.rand(lat.shape[0], generator=g) < 0.25] = 0  # zero slices
            if lat.shape[1] > 1:
                new[:, 0] = 0  # a kernel position that is zero everywhere: a one-symbol table
            if i == 1:
                new.view(-1)[0] = 40  # an outlier widens the table
            lat.copy_(new)
            if layer.bias is not None:
                layer.bias.normal_(0, 0.5, generator=g)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 1, generator=g)
                m.running_var.uniform_(0.2, 3.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.5, generator=g)
                m.num_batches_tracked.fill_(int(torch.randint(0, 1000, (1,), generator=g)))
        for p in model.prior_parameters():  # tables from a prior that is not the initial one
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.eval()


def make_model(name: str, seed: int = 0) -> lilnetx.LilNetXModel:
    c, s, w = SHAPES.get(name, DEFAULT)
    model = build(RunSpec(model=name, dataset="digits", width=w), splits_for(c, s))
    randomize(model, seed)
    return model


def n_latents(model) -> int:
    return sum(layer.latent.numel() for _, layer in model.latent_layers())


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_bit_exact_for_every_model(name, tmp_path):
    model = make_model(name)
    c, s, _ = SHAPES.get(name, DEFAULT)
    path = tmp_path / "model.lnx"
    size = fileformat.save(model, path)
    assert size == os.path.getsize(path) > 0
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file is renamed away

    ref = lilnetx.decode(model).eval()
    net = fileformat.load(path)
    assert not net.training
    want, got = ref.state_dict(), net.state_dict()
    assert want.keys() == got.keys()
    latent_keys = {f"{n}.weight" for n, _ in model.latent_layers()}
    for key, t in want.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert got[key].dtype == t.dtype, key
        assert torch.equal(got[key], t), key
    # the stored weights really are the random latents: zero slices decode to zero kernels
    for lname, layer in model.latent_layers():
        zero = ~layer.latent_int().bool().any(dim=1)
        w = got[f"{lname}.weight"]
        rows = layer.latent.shape[1]
        assert torch.equal(w.reshape(-1, rows)[zero], torch.zeros(int(zero.sum()), rows))
    assert latent_keys <= want.keys()

    x = torch.randn(3, c, s, s, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))

    # what `lilnetx inspect` reports
    r = report.inspect(path)
    assert r["size_bytes"] == size
    assert sum(r["breakdown"].values()) == size
    assert all(v >= 0 for v in r["breakdown"].values())
    assert r["arch"] == model.arch
    layers = model.latent_layers()
    assert [e["name"] for e in r["layers"]] == [n for n, _ in layers]
    for entry, (_, layer) in zip(r["layers"], layers, strict=True):
        lat = layer.latent_int()
        assert entry["group"] == layer.group
        assert tuple(entry["shape"]) == layer.weight_shape
        assert entry["params"] == lat.numel()
        assert entry["slice_sparsity"] == pytest.approx(
            float((~lat.bool().any(dim=1)).float().mean()))
        assert 0 <= entry["out_channels_kept"] <= layer.weight_shape[0]
        assert entry["bits"] >= 0
    assert r["latent_information_bits"] == pytest.approx(sum(e["bits"] for e in r["layers"]))
    if n_latents(model) >= 100_000:
        assert r["coding_efficiency"] <= 1.01
        assert r["breakdown"]["latent payload"] >= r["latent_information_bits"] / 8 - 8


def test_the_parametrization_covers_every_registered_model():
    assert {"mlp", "lenet5", "resnet20", "resnet32", "resnet56", "vgg16"} <= set(
        lilnetx.model_names())


def test_round_trip_with_direct_convert_and_registry_arch(tmp_path):
    torch.manual_seed(1)
    net = lilnetx.create_model("resnet20", in_channels=1, image_size=8, num_classes=3, width=0.5)
    model = lilnetx.convert(net)
    model.arch = archspec.registry_arch("resnet20", in_channels=1, image_size=8, num_classes=3,
                                        width=0.5)
    randomize(model, seed=3)
    path = tmp_path / "r.lnx"
    fileformat.save(model, path)
    loaded = fileformat.load(path)
    ref = lilnetx.decode(model).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref(x))
    assert fileformat.read(path).arch == model.arch


def test_save_is_deterministic_and_reload_is_a_fixed_point(tmp_path):
    model = make_model("lenet5", seed=7)
    a, b = tmp_path / "a.lnx", tmp_path / "b.lnx"
    fileformat.save(model, a)
    fileformat.save(model, b)
    assert a.read_bytes() == b.read_bytes()


def test_explicit_arch_argument(tmp_path):
    net = lilnetx.create_model("mlp", in_channels=1, image_size=4, num_classes=3)
    model = lilnetx.convert(net)
    assert model.arch is None
    arch = archspec.registry_arch("mlp", in_channels=1, image_size=4, num_classes=3)
    fileformat.save(model, tmp_path / "m.lnx", arch=arch)
    assert fileformat.read(tmp_path / "m.lnx").arch == arch


def test_a_model_without_arch_cannot_be_saved(tmp_path):
    model = lilnetx.convert(lilnetx.create_model("lenet5", in_channels=1, image_size=8,
                                                 num_classes=10))
    path = tmp_path / "none.lnx"
    with pytest.raises(FormatError, match="architecture"):
        fileformat.save(model, path)
    assert not path.exists()
    assert not list(tmp_path.iterdir())
    with pytest.raises(FormatError):
        fileformat.save(lilnetx.decode(model), path)  # a plain network is not a LilNetXModel


def test_load_never_unpickles(tmp_path, monkeypatch):
    """`load` and `inspect` never call pickle or torch.load (a .lnx file cannot run code)."""
    import pickle

    path = tmp_path / "m.lnx"
    model = make_model("resnet20")
    fileformat.save(model, path)

    def forbidden(*_a, **_k):
        raise AssertionError("the .lnx reader called pickle or torch.load")

    for target, attr in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                         (torch, "load"), (torch.serialization, "load")):
        monkeypatch.setattr(target, attr, forbidden)
    net = fileformat.load(path)
    report.inspect(path)
    ref = lilnetx.decode(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    # a torch checkpoint (zip + pickle) is refused without unpickling it
    monkeypatch.undo()
    ckpt = tmp_path / "ckpt.lnx"
    torch.save(ref.state_dict(), ckpt)
    for target, attr in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                         (torch, "load"), (torch.serialization, "load")):
        monkeypatch.setattr(target, attr, forbidden)
    with pytest.raises(FormatError):
        fileformat.load(ckpt)


def test_missing_file_raises_format_error(tmp_path):
    with pytest.raises(FormatError, match="missing.lnx"):
        fileformat.load(tmp_path / "missing.lnx")
    with pytest.raises(FormatError):
        report.inspect(tmp_path / "missing.lnx")
    with pytest.raises(FormatError):
        fileformat.load(tmp_path)  # a directory


def test_inspect_weight_sparsity_is_the_fraction_of_zero_weights(tmp_path):
    from lilnetx.stats import layer_stats, summarize

    model = make_model("lenet5")
    fileformat.save(model, tmp_path / "m.lnx")
    r = report.inspect(tmp_path / "m.lnx")
    stats = layer_stats(model)
    assert r["weight_sparsity"] == pytest.approx(summarize(stats)["weight_sparsity"])
    for entry, s in zip(r["layers"], stats, strict=True):
        assert entry["weight_sparsity"] == pytest.approx(s.weight_sparsity), entry["name"]


def test_the_documented_top_level_save_and_load(tmp_path):
    model = make_model("lenet5")
    lilnetx.save(model, tmp_path / "m.lnx")
    assert isinstance(lilnetx.load(tmp_path / "m.lnx"), nn.Module)


# ----------------------------------------------------------------------------- a trained run


@pytest.mark.slow
def test_trained_run_evaluates_to_the_same_accuracy_from_the_file(tmp_path):
    spec = RunSpec(model="lenet5", dataset="digits",
                   train=lilnetx.TrainConfig(epochs=1, batch_size=64, device="cpu", seed=0))
    outcome = lilnetx.run(spec)
    path = tmp_path / "run.lnx"
    summary = finalize(outcome, str(path), latency=False)
    assert summary["size_bytes"] == os.path.getsize(path)
    assert summary["compression_ratio"] == pytest.approx(summary["dense_bytes"] / os.path.getsize(
        path))
    assert "latency_ms" not in summary
    assert summary["sparse_flops"] <= summary["dense_flops"]
    # the file holds exactly the evaluated network
    net = fileformat.load(path)
    want = outcome.plain.state_dict()
    for key, t in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(t, want[key]), key

    exe = Path(sys.executable).with_name("lilnetx")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "explorer.cli"]
    proc = subprocess.run([*cmd, "evaluate", str(path), "--dataset", "digits", "--json",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["accuracy"] == outcome.summary["accuracy"]
    assert doc["size_bytes"] == summary["size_bytes"]
    assert doc["dataset"] == "digits"
    assert 0.0 <= doc["accuracy"] <= 1.0

    r = report.inspect(path)
    assert sum(r["breakdown"].values()) == summary["size_bytes"]
    assert r["slice_sparsity"] == pytest.approx(summary["slice_sparsity"])
