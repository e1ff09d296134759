"""Tests of slim export (lilnetx.deploy.slimming), MAC counting, ONNX export and latency measurement.

Slimming is checked on real networks whose latents are set so that whole input slices are zero:
the channels nobody reads must disappear from the producing convs (and from everything coupled to
them: BatchNorm, depthwise convs, squeeze-excitation, residual partners), and the slim network
must compute the same function as the decoded one.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
from lilnetx import fileformat
from lilnetx.core.latent import LatentLinear
from lilnetx.deploy.export import example_input, export_onnx
from lilnetx.deploy.latency import latency_ms, onnx_latency_ms, onnx_session
from lilnetx.deploy.slimming import count_macs, slim, zero_dead_reads
from lilnetx.fileformat import archspec

warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP spinning makes small ops 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- helpers


def nonzero_latents(model: lilnetx.LilNetXModel, seed: int = 0) -> None:
    """Integer latents in {-2, -1, 1, 2}: no weight (hence no slice) is zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.latent_layers():
            mag = torch.randint(1, 3, layer.latent.shape, generator=g).float()
            sign = torch.randint(0, 2, layer.latent.shape, generator=g).float() * 2 - 1
            layer.latent.copy_(mag * sign)
            if layer.bias is not None:
                layer.bias.normal_(0, 0.5, generator=g)


def zero_inputs(model: lilnetx.LilNetXModel, layer_name: str, channels: list[int]) -> None:
    """Zero the latent slices through which layer ``layer_name`` reads ``channels``."""
    layer = dict(model.latent_layers())[layer_name]
    out_c, in_c = layer.weight_shape[:2]
    with torch.no_grad():
        if isinstance(layer, LatentLinear):
            layer.latent.view(out_c, in_c)[:, channels] = 0
        else:
            assert layer.groups == 1
            layer.latent.view(out_c, in_c, -1)[:, channels] = 0


def calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm statistics of ``x`` and non-trivial affine parameters, so activations stay O(1)
    and every BatchNorm shift is non-zero (a dead channel's shift must not leak)."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.uniform_(0.1, 1.0, generator=g)
        model.train()
        model(x)
        model.eval()


def shapes(net: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) channels/features of every conv and linear layer, by module name."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def assert_same_function(a: nn.Module, b: nn.Module, x: torch.Tensor, tol: float = 1e-5):
    """max |a(x) - b(x)| <= tol * max(1, max |a(x)|) (float32 sums in another order)."""
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    scale = max(1.0, float(ya.abs().max()))
    diff = float((ya - yb).abs().max())
    assert diff <= tol * scale, (diff, scale)


class ResidualNet(nn.Module):
    """A user-defined network: stem, one residual block, a 1x1 head, global pooling, linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


# name -> (builder, input shape (C, S), zeroed inputs {reader layer: channels},
#          expected {layer: (in, out)} after slimming)
CASES = {
    "lenet5": (
        lambda: lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10),
        (1, 8), {"0.3": [1, 4], "3": [5, 6, 7]},
        {"0.0": (1, 4), "0.3": (4, 16), "1": (64, 117), "3": (117, 84)}),
    "resnet20": (
        lambda: lilnetx.create_model("resnet20", in_channels=3, image_size=32, num_classes=10),
        (3, 32), {"layers.0.conv2": [0, 3], "layers.4.conv2": [1]},
        {"layers.0.conv1": (16, 14), "layers.0.conv2": (14, 16), "layers.4.conv1": (32, 31),
         "layers.4.conv2": (31, 32), "layers.1.conv1": (16, 16)}),
    "vgg16": (
        lambda: lilnetx.create_model("vgg16", in_channels=3, image_size=32, num_classes=10,
                                     width=0.25),
        (3, 32), {"3": [0, 2], "37": [5]},
        {"0": (3, 14), "3": (14, 16), "34": (128, 127), "37": (127, 128)}),
    "tv:mobilenet_v3_small": (
        lambda: lilnetx.create_model("tv:mobilenet_v3_small", in_channels=3, image_size=32,
                                     num_classes=10),
        (3, 32), {"features.4.block.3.0": [0, 5], "features.4.block.2.fc1": [0, 5]},
        {"features.4.block.0.0": (24, 94), "features.4.block.1.0": (94, 94),
         "features.4.block.2.fc1": (94, 24), "features.4.block.2.fc2": (24, 94),
         "features.4.block.3.0": (94, 40)}),
    "residual": (
        ResidualNet, (3, 8),
        {"conv1": [2], "head": [2], "conv2": [5], "fc": [1]},
        {"stem": (3, 7), "conv1": (7, 7), "conv2": (7, 7), "head": (7, 5), "fc": (5, 5)}),
}


@pytest.mark.parametrize("name", [
    "lenet5", "residual", "resnet20", "vgg16",
    pytest.param("tv:mobilenet_v3_small", marks=pytest.mark.slow),
])
def test_slim_removes_unread_channels_and_keeps_the_function(name):
    build, (c, s), zeros, expected = CASES[name]
    torch.manual_seed(0)
    model = lilnetx.convert(build())
    nonzero_latents(model)
    x = torch.randn(4, c, s, s, generator=torch.Generator().manual_seed(2))
    calibrate(model, torch.randn(8, c, s, s, generator=torch.Generator().manual_seed(3)))

    # no zero slice: nothing is removed
    dense_shapes = shapes(lilnetx.decode(model))
    assert shapes(slim(model, x[:1])) == dense_shapes

    # zero slices: exactly the unread channels go, with everything coupled to them
    for layer, channels in zeros.items():
        zero_inputs(model, layer, channels)
    plain = lilnetx.decode(model).eval()
    slim_net = slim(model, x[:1])
    assert not slim_net.training
    got = shapes(slim_net)
    assert got.keys() == dense_shapes.keys()
    for layer, io in expected.items():
        assert got[layer] == io, (layer, got[layer], io)
    assert sum(o for _, o in got.values()) < sum(o for _, o in dense_shapes.values())
    assert all(got[k][1] <= dense_shapes[k][1] for k in dense_shapes)
    assert_same_function(plain, slim_net, x)


def test_slim_without_zeros_keeps_the_function():
    torch.manual_seed(0)
    model = lilnetx.convert(ResidualNet())
    nonzero_latents(model)
    calibrate(model, torch.randn(8, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    plain = lilnetx.decode(model)
    slim_net = slim(model, x[:1])
    assert shapes(slim_net) == shapes(plain)
    assert_same_function(plain, slim_net, x)


def test_slim_of_a_plain_network_does_not_change_it():
    torch.manual_seed(0)
    model = lilnetx.convert(ResidualNet())
    nonzero_latents(model)
    zero_inputs(model, "conv1", [2])
    zero_inputs(model, "head", [2])
    calibrate(model, torch.randn(8, 3, 8, 8))
    plain = lilnetx.decode(model).eval()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    slim_net = slim(plain, torch.randn(1, 3, 8, 8))
    assert shapes(slim_net)["stem"] == (3, 7)
    assert shapes(plain)["stem"] == (3, 8)
    after = plain.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class ChainNet(nn.Module):
    """conv a -> BN -> ReLU -> conv b -> BN -> ReLU -> conv c -> BN -> ReLU -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b, self.bn_b = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c, self.bn_c = nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = F.relu(self.bn_a(self.a(x)))
        x = F.relu(self.bn_b(self.b(x)))
        return self.fc(F.relu(self.bn_c(self.c(x))).mean((2, 3)))


def _chain(zero_writer_a: list[int], shift: float) -> nn.Module:
    """A calibrated ChainNet whose conv ``a`` writes nothing to ``zero_writer_a`` (zero weight
    slices) and whose BatchNorms shift those channels by ``shift`` (ReLU(shift) after them)."""
    torch.manual_seed(0)
    net = ChainNet()
    calibrate(net, torch.randn(8, 3, 8, 8))
    with torch.no_grad():
        net.a.weight[zero_writer_a] = 0
        for bn in (net.bn_a, net.bn_b):
            bn.running_mean.zero_()
            bn.bias.fill_(0.5)
        net.bn_a.bias[zero_writer_a] = shift
    return net.eval()


def test_reads_of_a_dead_channel_are_dropped_and_the_channel_goes():
    # a's channels 1 and 4 are BN(0) = -0.3 under a ReLU: identically zero, though b reads them
    net = _chain([1, 4], -0.3)
    assert bool(net.b.weight[:, [1, 4]].ne(0).all())
    x = torch.randn(4, 3, 8, 8)
    slim_net = slim(net, x[:1])
    assert shapes(slim_net)["a"] == (3, 4) and shapes(slim_net)["b"] == (4, 6)
    assert_same_function(net, slim_net, x)
    # without dropping dead reads nothing goes (b reads every channel)
    assert shapes(slim(net, x[:1], drop_dead=False)) == shapes(net)


def test_a_constant_nonzero_channel_is_kept():
    net = _chain([1, 4], 0.3)  # ReLU(0.3) = 0.3 everywhere: constant but read
    x = torch.randn(4, 3, 8, 8)
    copy_net = copy.deepcopy(net)
    assert zero_dead_reads(copy_net, x[:1]) == 0
    assert shapes(slim(net, x[:1])) == shapes(net)


def test_a_channel_dead_only_on_some_inputs_is_kept():
    # a's channel 2 reads the input (non-zero weights) with a large negative shift: it is zero on
    # typical inputs, but not for every input, so its reads must stay
    net = _chain([], 0.5)
    with torch.no_grad():
        net.bn_a.bias[2] = -3.0
    x = torch.randn(4, 3, 8, 8) * 0.01
    assert zero_dead_reads(copy.deepcopy(net), x[:1]) == 0
    assert shapes(slim(net, x[:1]))["a"] == (3, 6)


def test_dead_channels_propagate_down_the_chain():
    # b's output channel 3 reads only a's dead channels 1 and 4: once those reads go, b writes
    # nothing to channel 3, and with a shift <= 0 it is dead for c in turn
    net = _chain([1, 4], -0.3)
    with torch.no_grad():
        keep = [i for i in range(6) if i not in (1, 4)]
        net.b.weight[3, keep] = 0
        net.bn_b.bias[3] = -0.1
    x = torch.randn(4, 3, 8, 8)
    work = copy.deepcopy(net)
    assert zero_dead_reads(work, x[:1]) == 3  # b reads 1 and 4, then c reads 3
    assert_same_function(net, work, x, tol=0.0)
    slim_net = slim(net, x[:1])
    assert shapes(slim_net)["b"] == (4, 5) and shapes(slim_net)["c"] == (5, 5)
    assert_same_function(net, slim_net, x)


def test_dead_channels_in_a_residual_stream_need_every_writer_zero():
    torch.manual_seed(0)
    model = lilnetx.convert(ResidualNet())
    nonzero_latents(model)
    calibrate(model, torch.randn(8, 3, 8, 8))
    plain = lilnetx.decode(model).eval()
    with torch.no_grad():  # channel 3 of the residual stream: the stem's write goes, conv2's stays
        plain.stem.weight[3] = 0
        plain.bn0.bias[3] = -1.0
        plain.bn0.running_mean[3] = 0.0
    x = torch.randn(4, 3, 8, 8)
    assert shapes(slim(plain, x[:1]))["stem"] == (3, 8)
    with torch.no_grad():  # and once conv2 writes nothing to it either, with a shift <= 0
        plain.conv2.weight[3] = 0
        plain.bn2.bias[3] = -1.0
        plain.bn2.running_mean[3] = 0.0
    slim_net = slim(plain, x[:1])
    assert shapes(slim_net)["stem"] == (3, 7) and shapes(slim_net)["conv2"] == (8, 7)
    assert_same_function(plain, slim_net, x)


def test_slim_rejects_a_non_module():
    with pytest.raises(lilnetx.ConfigError):
        slim("not a network", torch.zeros(1, 3, 8, 8))


# ----------------------------------------------------------------------------- MACs


def _known_net() -> nn.Module:
    """8x8 input: conv 3->8 3x3 pad 1, depthwise 3x3, conv 8->4 1x1 stride 2, linear 64->10."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 4, 1, stride=2), nn.Flatten(), nn.Linear(64, 10)).eval()


def test_count_macs_matches_the_analytic_count():
    net = _known_net()
    # MACs per sample (bias additions not counted):
    #   conv 3->8, 3x3, 8x8 output:          8 * 3 * 9 * 64 = 13824
    #   depthwise 8 channels, 3x3, 8x8:      8 * 1 * 9 * 64 =  4608
    #   conv 8->4, 1x1, stride 2, 4x4 out:   4 * 8 * 1 * 16 =   512
    #   linear 64->10:                       64 * 10        =   640
    dense = 13824 + 4608 + 512 + 640
    for batch in (1, 3):
        counts = count_macs(net, torch.randn(batch, 3, 8, 8))
        assert counts["flops"] == dense == 19584
        assert counts["sparse_flops"] == dense  # no zero weights
    with torch.no_grad():
        net[0].weight[:, 0] = 0  # 8 of the 24 slices of the first conv
        net[6].weight.view(-1)[:100] = 0  # 100 of the 640 linear weights
    counts = count_macs(net, torch.randn(2, 3, 8, 8))
    assert counts["flops"] == dense  # the dense count ignores zeros
    assert counts["sparse_flops"] == 16 * 9 * 64 + 4608 + 512 + 540
    assert counts["sparse_flops"] <= counts["flops"]


def test_count_macs_of_the_slim_network_drops(tmp_path):
    torch.manual_seed(0)
    model = lilnetx.convert(CASES["lenet5"][0]())
    nonzero_latents(model)
    zero_inputs(model, "0.3", [1, 4])
    plain = lilnetx.decode(model).eval()
    x = torch.randn(1, 1, 8, 8)
    dense, small = count_macs(plain, x), count_macs(slim(plain, x), x)
    assert small["flops"] < dense["flops"]
    assert dense["sparse_flops"] <= dense["flops"]
    assert small["sparse_flops"] <= small["flops"]
    # conv1 loses 2 of 6 output channels: 2 * 1 * 25 * 64 MACs; conv2 reads 2 fewer: 16*2*25*16
    assert dense["flops"] - small["flops"] == 2 * 25 * 64 + 16 * 2 * 25 * 16


# ----------------------------------------------------------------------------- ONNX


def exported_slim(name: str, tmp_path):
    """A case's LilNetX network with its zero channels, slimmed and exported as ONNX: (slim
    network, ONNX path, channels, image size)."""
    build, (c, s), zeros, _ = CASES[name]
    torch.manual_seed(0)
    model = lilnetx.convert(build())
    nonzero_latents(model)
    for layer, channels in zeros.items():
        zero_inputs(model, layer, channels)
    calibrate(model, torch.randn(8, c, s, s))
    net = slim(model, torch.randn(1, c, s, s))
    path = tmp_path / "slim.onnx"
    export_onnx(net, torch.randn(1, c, s, s), path)
    return net, path, c, s


@pytest.mark.parametrize("name", ["residual", "lenet5"])
def test_export_onnx_matches_torch_with_a_dynamic_batch(tmp_path, name):
    import onnxruntime as ort

    net, path, c, s = exported_slim(name, tmp_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for batch in (1, 3):
        x = torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(batch))
        (got,) = sess.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            want = net(x).numpy()
        assert got.shape == want.shape == (batch, want.shape[1])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_export_onnx_rejects_another_suffix(tmp_path):
    with pytest.raises(lilnetx.ConfigError, match=r"\.onnx"):
        export_onnx(_known_net(), torch.randn(1, 3, 8, 8), tmp_path / "model.bin")


# ----------------------------------------------------------------------------- latency


def test_latency_is_positive_and_restores_the_thread_count():
    old = torch.get_num_threads()
    net = _known_net()
    try:
        torch.set_num_threads(2)
        ms = latency_ms(net, (3, 8, 8), threads=1, warmup=1, repeats=3, min_seconds=0.01)
        assert isinstance(ms, float) and ms > 0
        assert torch.get_num_threads() == 2
        ms = latency_ms(net, (3, 8, 8), batch=4, threads=None, warmup=1, repeats=3,
                        min_seconds=0.0)
        assert ms > 0 and torch.get_num_threads() == 2

        class Broken(nn.Module):
            def forward(self, x):
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            latency_ms(Broken(), (3, 8, 8), threads=1, warmup=1, repeats=1, min_seconds=0.0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_onnx_latency_of_an_exported_slim_model(tmp_path):
    net, path, c, s = exported_slim("residual", tmp_path)
    for threads in (1, 2):
        # the session the latency is measured on computes the torch network's outputs
        sess = onnx_session(path, threads=threads)
        x = torch.randn(5, c, s, s, generator=torch.Generator().manual_seed(threads))
        (got,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-4)
        for batch in (1, 4):
            ms = onnx_latency_ms(path, (c, s, s), batch=batch, threads=threads, warmup=1,
                                 repeats=3, min_seconds=0.0)
            assert isinstance(ms, float) and 0 < ms < 10_000
    ms = onnx_latency_ms(path.read_bytes(), (c, s, s), warmup=1, repeats=3, min_seconds=0.0)
    assert isinstance(ms, float) and ms > 0


def test_onnx_session_spinning_is_the_onnxruntime_setting(tmp_path):
    net, path, c, s = exported_slim("residual", tmp_path)
    key = "session.intra_op.allow_spinning"
    x = {"input": torch.randn(2, c, s, s).numpy()}
    for spinning, want in ((True, ""), (False, "0")):
        sess = onnx_session(path, threads=2, spinning=spinning)
        opts = sess.get_session_options()
        try:
            got = opts.get_session_config_entry(key)
        except Exception:  # onnxruntime raises for a key that was never set
            got = ""
        assert got == want
        (out,) = sess.run(None, x)  # the same outputs either way
        with torch.no_grad():
            np.testing.assert_allclose(out, net(torch.from_numpy(x["input"])).numpy(),
                                       rtol=1e-4, atol=1e-4)


def test_onnx_latency_rejects_bad_input(tmp_path, monkeypatch):
    path = tmp_path / "known.onnx"
    export_onnx(_known_net(), torch.randn(1, 3, 8, 8), path)
    with pytest.raises(lilnetx.ConfigError, match="input"):
        onnx_latency_ms(path, (3, 9, 9), warmup=1, repeats=1, min_seconds=0.0)
    with pytest.raises(lilnetx.ConfigError, match="threads"):
        onnx_latency_ms(path, (3, 8, 8), threads=0)
    with pytest.raises(lilnetx.ConfigError, match="batch"):
        onnx_latency_ms(path, (3, 8, 8), batch=0)
    with pytest.raises(lilnetx.ConfigError, match="ONNX"):
        onnx_latency_ms(b"not an onnx model", (3, 8, 8))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(lilnetx.LilNetXError, match="pip install onnxruntime"):
        onnx_latency_ms(path, (3, 8, 8))


# ----------------------------------------------------------------------------- CLI


def _lnx(path: Path) -> None:
    """A lenet5 .lnx file for 8x8 digits with zero slices (two conv1 channels unread)."""
    torch.manual_seed(0)
    model = lilnetx.convert(CASES["lenet5"][0]())
    nonzero_latents(model)
    zero_inputs(model, "0.3", [1, 4])
    model.arch = archspec.registry_arch("lenet5", in_channels=1, image_size=8, num_classes=10)
    fileformat.save(model, path)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lilnetx")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "explorer.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_cli_slim_writes_onnx_and_json(tmp_path):
    import onnxruntime as ort

    lnx, onnx_path = tmp_path / "m.lnx", tmp_path / "out" / "slim.onnx"
    onnx_path.parent.mkdir()
    _lnx(lnx)
    proc = _cli(["slim", str(lnx), "--onnx", str(onnx_path), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    for key in ("flops", "dense_flops", "sparse_flops", "channel_sparsity", "latency_ms",
                "onnx_latency_ms", "onnx_latency_ms_b64"):
        assert key in doc, key
    assert doc["onnx_latency_ms"] > 0 and doc["onnx_latency_ms_b64"] > doc["onnx_latency_ms"]
    rounded = _cli(["slim", str(lnx), "--round-to", "8", "--no-latency", "--json"], tmp_path)
    assert rounded.returncode == 0, rounded.stderr[-3000:]
    assert json.loads(rounded.stdout)["flops"] >= doc["flops"]
    narrow = _cli(["slim", str(lnx), "--round-to", "8", "--keep-narrow", "--no-latency",
                   "--json"], tmp_path)
    assert narrow.returncode == 0, narrow.stderr[-3000:]
    assert doc["flops"] <= json.loads(narrow.stdout)["flops"] <= json.loads(rounded.stdout)["flops"]
    bad = _cli(["slim", str(lnx), "--round-to", "0", "--json"], tmp_path)
    assert bad.returncode == 2 and "round_to" in bad.stderr
    assert doc["flops"] < doc["dense_flops"]
    assert doc["sparse_flops"] <= doc["dense_flops"]
    assert doc["latency_ms"] > 0
    assert 0 < doc["channel_sparsity"] < 1
    assert doc["onnx_path"] == str(onnx_path)
    # the ONNX network computes what the file's decoded network computes
    net = fileformat.load(lnx)
    x = example_input({"in_channels": 1, "image_size": 8}, batch=3)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-4)


def test_cli_train_onnx_without_out_exits_2(tmp_path, capsys, monkeypatch):
    from explorer.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1",
                 "--no-latency", "--onnx", str(tmp_path / "x.onnx"), "--json"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--out" in lines[0], err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_train_onnx_without_out_is_rejected_before_any_work(tmp_path, capsys):
    from explorer.cli import main

    code = main(["train", "--model", "resnet20", "--dataset", "cifar10", "--data-root",
                 str(tmp_path / "no-data"), "--onnx", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--out" in err, err


def test_the_documented_top_level_slim():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    out = lilnetx.slim(net, torch.randn(1, 1, 8, 8))
    assert isinstance(out, nn.Module)
