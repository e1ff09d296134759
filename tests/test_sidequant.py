"""Side information (decoders, biases, BatchNorm) quantized to a power-of-two grid: trained
straight-through, stored as integers, and what the file decodes to is what was measured."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lilnetx
from lilnetx import fileformat
from lilnetx.core.sidequant import (
    fold_batchnorm,
    is_folded,
    quantize,
    quantize_many_ste,
    quantize_ste,
    step_exponent,
    unit_variance,
)
from lilnetx.fileformat import archspec, compact, report


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_quantize_is_a_power_of_two_grid_and_idempotent(bits):
    torch.manual_seed(bits)
    x = torch.randn(1000) * 3.7
    q = quantize(x, bits)
    e = step_exponent(float(x.abs().max()), bits)
    ints = q / 2.0 ** e
    assert torch.equal(ints, torch.round(ints))
    assert float(ints.abs().max()) <= 2 ** (bits - 1)
    assert float((q - x).abs().max()) <= 2.0 ** e / 2
    assert torch.equal(quantize(q, bits), q)  # the file and the training forward agree
    assert torch.equal(quantize(x, 0), x)
    assert torch.equal(quantize(torch.zeros(3), bits), torch.zeros(3))


def test_exact_integers_find_the_coarsest_grid():
    q = quantize(torch.randn(50), 6).numpy()
    ints, e = compact.exact_integers(q)
    assert (ints * 2.0 ** e == q).all() and (ints & 1).any()
    assert compact.exact_integers(torch.randn(50).numpy()) is None  # float32: stored raw


def test_straight_through_gradient_is_the_identity():
    x = torch.randn(20, requires_grad=True)
    y = quantize_ste(x, 4)
    assert torch.equal(y.detach(), quantize(x.detach(), 4))
    (y * torch.arange(20.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(20.0))


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_batched_quantization_equals_one_tensor_at_a_time(bits):
    torch.manual_seed(bits)
    xs = [torch.randn(5, 5) * 3.7, torch.randn(7) * 1e-3, torch.zeros(4), torch.tensor([0.5]),
          torch.randn(3, 2, 2) * 400]
    for x in xs:
        x.requires_grad_(True)
    many = quantize_many_ste(xs, bits)
    for x, q in zip(xs, many, strict=True):
        assert q.shape == x.shape
        assert torch.equal(q, quantize(x.detach(), bits))
    sum(((i + 1) * q).sum() for i, q in enumerate(many)).backward()
    for i, x in enumerate(xs):  # straight through, each tensor its own gradient
        assert torch.equal(x.grad, torch.full_like(x, i + 1.0))
    assert quantize_many_ste(xs, 0) == xs
    mixed = [torch.randn(3), torch.randn(3, dtype=torch.float64), torch.empty(0)]
    got = quantize_many_ste(mixed, bits)
    assert all(torch.equal(q, quantize(x, bits)) for x, q in zip(mixed, got, strict=True))


def test_a_forward_quantizes_decoders_and_biases_once_and_clears_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model = lilnetx.convert(net)
    x = torch.randn(2, 1, 8, 8)
    out = model(x)
    layers = [m for _, m in model.latent_layers()]
    assert all("_effective_bias" not in m.__dict__ for m in layers)
    assert all("_effective" not in d.__dict__ for d in model.decoders.values())
    # the same forward, each layer quantizing its own side information
    h = x
    for m in model.net:
        h = m(h)
    assert torch.equal(out, h)


def test_folded_batchnorm_is_an_affine_map_with_unit_variance():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 3.0)
    bn.weight.data.uniform_(0.5, 2.0)
    bn.bias.data.normal_()
    x = torch.randn(4, 5, 3, 3)
    ref = bn(x)
    fold_batchnorm(bn, 16)
    assert is_folded(bn)
    assert float((bn.running_var + bn.eps).max()) == 1.0 == float(torch.ones(1)
                                                                  / torch.sqrt(bn.running_var[:1] + bn.eps))
    torch.testing.assert_close(bn(x), ref, rtol=1e-3, atol=1e-3)
    v = unit_variance(1e-3)
    assert float(torch.tensor(v) + torch.tensor(1e-3)) == 1.0


def _lenet(**kw):
    torch.manual_seed(0)
    model = lilnetx.convert(lilnetx.create_model("lenet5", in_channels=1, image_size=8,
                                                 num_classes=10), **kw)
    model.arch = archspec.registry_arch("lenet5", in_channels=1, image_size=8, num_classes=10)
    return model


@pytest.mark.parametrize("form", ["full", "diagonal", "scalar"])
@pytest.mark.parametrize("side_bits", [0, 4, 8])
def test_the_file_decodes_to_the_trained_forward(form, side_bits, tmp_path):
    """The training forward (eval mode), the exported plain network and the decoded file give
    the same outputs; the file stores the side information as integers unless side_bits=0."""
    model = _lenet(decoder=form, side_bits=side_bits).eval()
    with torch.no_grad():
        for _, layer in model.latent_layers():
            layer.bias.normal_(0, 0.3)
    x = torch.randn(6, 1, 8, 8)
    plain = lilnetx.decode(model).eval()
    fileformat.save(model, tmp_path / "m.lnx")
    loaded = fileformat.load(tmp_path / "m.lnx")
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(loaded(x), plain(x))
    info = report.inspect(tmp_path / "m.lnx")
    assert info["decoder_forms"]["conv5x5"] == form
    raw = info["breakdown"]["float32 tensors"]
    assert (raw > 0) == (side_bits == 0)
    steps = [t["step"] for t in info["side_tensors"]]
    assert all(s is not None and math.log2(s) == int(math.log2(s)) for s in steps) or not side_bits


def test_decoder_forms_have_their_shapes_and_costs(tmp_path):
    sizes = {}
    for form in ("full", "diagonal", "scalar"):
        model = _lenet(decoder=form)
        assert model.decoders["conv5x5"].weight.shape == {"full": (25, 25), "diagonal": (25,),
                                                          "scalar": (1, 1)}[form]
        assert model.decoders["dense"].weight.shape == (1, 1)
        fileformat.save(model, tmp_path / f"{form}.lnx")
        sizes[form] = report.inspect(tmp_path / f"{form}.lnx")["side_tensors"][0]["bits"]
    # information bits of the stored decoder: a 25x25 matrix of 8-bit integers, 25 integers
    # (all equal at init: no bits), one integer (no bits: its value is in the index)
    assert sizes["full"] > 625 * 4 and sizes["diagonal"] <= 25 * 8 and sizes["scalar"] == 0


def test_an_all_zero_group_stores_no_table_and_no_decoder(tmp_path):
    model = _lenet(decoder="full")
    with torch.no_grad():
        for _, layer in model.latent_layers():
            layer.latent.zero_()
            layer.bias.zero_()
    n = fileformat.save(model, tmp_path / "z.lnx")
    info = report.inspect(tmp_path / "z.lnx")
    assert info["decoder_forms"] == {"conv5x5": "empty", "dense": "empty"}
    assert info["breakdown"]["latent payload"] == 0
    assert n < 60, info["breakdown"]
    out = fileformat.load(tmp_path / "z.lnx")(torch.randn(2, 1, 8, 8))
    assert torch.equal(out, torch.zeros_like(out))


def test_quant_baseline_side_information_is_quantized_and_measured(tmp_path):
    from lilnetx import RunSpec, TrainConfig, run

    out = run(RunSpec(model="resnet20", dataset="digits", method="quant",
                      options={"bits": 6, "side_bits": 8},
                      train=TrainConfig(epochs=1, batch_size=128, seed=0)))
    path = tmp_path / "q.lnx"
    fileformat.write(out.method.encode(out.model, out.arch), path)
    info = report.inspect(path)
    assert info["breakdown"]["float32 tensors"] == 0
    loaded = fileformat.load(path)
    acc = lilnetx.evaluate_accuracy(loaded, out.splits.test)
    assert acc == out.summary["accuracy"]
    assert any(isinstance(m, nn.BatchNorm2d) and is_folded(m) for m in loaded.modules())


def test_a_dead_channel_does_not_coarsen_the_folded_batchnorm_grid():
    """A channel whose producer's weights are all zero reads a constant: its BatchNorm's
    running variance decays to ~0 and 1 / sqrt(var + eps) to ~316. Folded on one grid with the
    others, it rounded every live channel's scale to 0 (a sparse ResNet-20 file at chance
    accuracy); it is stored as scale 0 and the decoded network keeps the eval outputs."""
    torch.manual_seed(0)
    model = lilnetx.convert(lilnetx.create_model("resnet20", in_channels=3, image_size=16,
                                                 num_classes=10, width=0.25)).eval()
    conv = dict(model.latent_layers())["layers.0.conv1"]
    bn = model.net.layers[0].bn1
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.running_mean.normal_(0, 0.1)
        per_out = conv.latent.shape[0] // conv.weight_shape[0]
        conv.latent[:per_out] = 0  # output channel 0 of the conv: all-zero weights
        bn.running_var[0], bn.running_mean[0] = 1e-12, 0.0  # what training leaves behind
        bn.running_var[1] = 2e-5  # a live channel of tiny variance: a scale ~180x the others'
        bn.weight[1] = 1.0
    x = torch.randn(4, 3, 16, 16)
    plain = lilnetx.decode(model).eval()
    with torch.no_grad():
        ref, got = model(x), plain(x)
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
    folded = plain.layers[0].bn1
    assert float(folded.weight[0]) == 0.0 and float(folded.weight[1:].abs().min()) > 0
    live = bn.weight[2:] / torch.sqrt(bn.running_var[2:] + bn.eps)  # on an 8-bit grid of them
    assert float(((folded.weight[2:] - live) / live).abs().max()) < 2 ** -6
