"""Latent reparameterization: exact zero kernels, straight-through rounding, decoding, init."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
from lilnetx import LatentConv2d, LatentLinear, round_ste
from lilnetx.train import TrainConfig, joint_loss, make_optimizers

# (kind, layer factory, input shape): one layer of every reparameterization the method has.
LAYERS = {
    "conv3x3": (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 7, 7)),
    "conv5x5": (lambda: nn.Conv2d(4, 6, 5, padding=2), (2, 4, 7, 7)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 7, 7)),
    "conv1x1": (lambda: nn.Conv2d(4, 6, 1), (2, 4, 7, 7)),
    "linear": (lambda: nn.Linear(12, 6), (2, 12)),
}


def _single(kind: str):
    """(converted model, its only latent layer, an input) for one entry of LAYERS."""
    make, shape = LAYERS[kind]
    model = lilnetx.convert(nn.Sequential(make()))
    (_, layer), = model.latent_layers()
    return model, layer, torch.randn(shape)


def _slices_per_output(layer) -> int:
    return layer.latent.shape[0] // layer.weight_shape[0]


@pytest.mark.parametrize("kind", list(LAYERS))
def test_zero_latent_slice_decodes_to_exact_zero_kernel(kind):
    model, layer, x = _single(kind)
    per_out = _slices_per_output(layer)
    with torch.no_grad():
        # Every latent a non-zero integer, so no slice is zero by accident ...
        sign = torch.where(torch.rand_like(layer.latent) < 0.5, -1.0, 1.0)
        layer.latent.copy_(sign * torch.randint(1, 4, layer.latent.shape).float())
        # ... then output channel 0 gets latents that round to zero (not exactly zero) and
        # one more slice (output 3, first input) gets exact zeros.
        layer.latent[:per_out] = torch.empty(per_out, layer.latent.shape[1]).uniform_(-0.49, 0.49)
        layer.latent[3 * per_out] = 0.0
        assert (layer.latent[:per_out] != 0).any()
    assert [n for n, _ in layer.decoder.named_parameters()] == ["weight"]  # no shift term

    w_export = layer.export_weight()
    w_forward = layer.decoded_weight().detach()
    for w in (w_export, w_forward):
        assert w.shape == layer.weight_shape
        assert torch.equal(w[0], torch.zeros_like(w[0]))  # exactly zero, not just small
        assert torch.equal(w[3].reshape(w.shape[1], -1)[0], torch.zeros_like(w[3].reshape(
            w.shape[1], -1)[0]))
        rows = w.reshape(layer.latent.shape[0], -1)
        nonzero_rows = (rows != 0).any(dim=1)
        assert int((~nonzero_rows).sum()) == per_out + 1  # the others stay non-zero

    # Structured sparsity in the latent space is structured sparsity of the layer's output:
    # output channel 0 is exactly the bias, whatever the input.
    model.eval()
    with torch.no_grad():
        out = model(x)
    bias = layer.effective_bias().detach()  # the bias on its side-information grid
    assert torch.equal(out[:, 0], torch.full_like(out[:, 0], float(bias[0])))
    assert not torch.equal(out[:, 1], torch.full_like(out[:, 1], float(bias[1])))


def test_round_ste_rounds_forward_and_passes_gradient():
    x = torch.tensor([-2.6, -1.5, -0.49, 0.0, 0.3, 0.5, 1.51, 7.2], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    weights = torch.arange(1.0, 9.0)
    (y * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # identity gradient


@pytest.mark.parametrize("kind", ["conv3x3", "depthwise", "linear"])
def test_forward_uses_integer_latents(kind):
    model, layer, x = _single(kind)
    model.eval()
    with torch.no_grad():
        ints = torch.round(layer.latent)
        layer.latent.copy_(ints)
        out_int = model(x)
        # Move every latent inside its rounding cell: the forward pass must not change.
        layer.latent.add_(torch.empty_like(ints).uniform_(-0.45, 0.45))
        assert not torch.equal(layer.latent, ints)
        out_moved = model(x)
        assert torch.equal(layer.latent_int(), ints)
        dec = layer.decoder.effective_weight()  # the decoder on its side-information grid
        expected_w = ints @ dec if ints.shape[1] > 1 else ints * dec
        assert torch.equal(layer.decoded_weight(), expected_w.reshape(layer.weight_shape))
    assert torch.equal(out_int, out_moved)


def test_straight_through_gradient_is_the_weight_gradient_through_the_decoder():
    model, layer, x = _single("conv3x3")
    out = model(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    # Reference: the gradient of the same loss w.r.t. the decoded weight, mapped back through
    # the linear decoder as if rounding were the identity.
    w = layer.decoded_weight().detach().requires_grad_(True)
    (F.conv2d(x, w, layer.effective_bias().detach(), layer.stride, layer.padding)
     * g).sum().backward()
    s = layer.decoder.effective_weight().detach()
    expected = w.grad.reshape(layer.latent.shape) @ s.t()
    torch.testing.assert_close(layer.latent.grad, expected, rtol=1e-4, atol=1e-6)
    assert layer.latent.grad.abs().sum() > 0


def _lenet_digits() -> lilnetx.LilNetXModel:
    net = lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10)
    return lilnetx.convert(net)


def test_gradients_reach_every_latent_through_the_model(digits_batch):
    x, y = digits_batch
    model = _lenet_digits()
    F.cross_entropy(model(x), y).backward()
    for name, layer in model.latent_layers():
        assert layer.latent.grad is not None, name
        assert torch.isfinite(layer.latent.grad).all(), name
        assert layer.latent.grad.abs().sum() > 0, name


def test_decoders_and_priors_learn_with_the_joint_loss(digits_batch):
    x, y = digits_batch
    model = _lenet_digits()
    model.train()
    cfg = TrainConfig(lambda_rate=1.0, lambda_sparsity=1e-3, lambda_l2=1e-4)
    opts = make_optimizers(model, cfg)

    # The two optimizers partition the parameters: priors alone in the second one.
    ids = [[id(p) for g in o.param_groups for p in g["params"]] for o in opts]
    assert len(opts) == 2
    assert set(ids[1]) == {id(p) for p in model.priors.parameters()}
    assert set(ids[0]).isdisjoint(ids[1])
    assert set(ids[0]) | set(ids[1]) == {id(p) for p in model.parameters()}
    assert {id(d.weight) for d in model.decoders.values()} <= set(ids[0])
    assert {id(p) for p in model.latent_parameters()} <= set(ids[0])

    terms = joint_loss(model, model(x), y, cfg)
    assert {"loss", "ce", "bits", "slice", "l2"} <= set(terms)
    expected = (terms["ce"] + cfg.lambda_rate * terms["bits"] / model.n_rows()
                + cfg.lambda_sparsity * terms["slice"] + cfg.lambda_l2 * terms["l2"])
    torch.testing.assert_close(terms["loss"], expected)
    assert model.n_rows() == sum(layer.latent.shape[0] for _, layer in model.latent_layers())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for o in opts:
        o.zero_grad(set_to_none=True)
    terms["loss"].backward()
    for key, dec in model.decoders.items():
        assert dec.weight.grad is not None and dec.weight.grad.abs().sum() > 0, key
    for key, prior in model.priors.items():
        for name, p in prior.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (key, name)
        assert sum(float(p.grad.abs().sum()) for p in prior.parameters()) > 0, key
    for o in opts:
        o.step()
    after = dict(model.named_parameters())
    for key in model.decoders:
        name = f"decoders.{key}.weight"
        assert not torch.equal(before[name], after[name]), name
    for key in model.priors:
        changed = [n for n in before if n.startswith(f"priors.{key}.")
                   and not torch.equal(before[n], after[n])]
        assert changed, f"prior {key} did not change"
    for name in before:
        if name.endswith(".latent"):
            assert not torch.equal(before[name], after[name]), name


def _plain_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize(("name", "shape"), [("lenet5", (1, 8, 8)), ("resnet20", (3, 16, 16))])
def test_decode_gives_plain_layers_with_export_weights_and_same_outputs(name, shape):
    c, h, _ = shape
    # side_bits=0: float32 side information, so the plain BatchNorm is the model's own
    # (folding and quantization are tests/test_sidequant.py's)
    model = lilnetx.convert(lilnetx.create_model(name, in_channels=c, image_size=h,
                                                 num_classes=10), side_bits=0)
    x = torch.randn(8, *shape)
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.train()
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    model.eval()
    latents_before = [layer.latent.detach().clone() for _, layer in model.latent_layers()]

    plain = lilnetx.decode(model)
    assert not plain.training
    latent_layers = model.latent_layers()
    dense_layers = _plain_layers(plain)
    assert len(dense_layers) == len(latent_layers)
    assert not any(isinstance(m, LatentConv2d | LatentLinear) for m in plain.modules())
    for (lname, layer), dense in zip(latent_layers, dense_layers, strict=True):
        assert type(dense) is (nn.Linear if isinstance(layer, LatentLinear) else nn.Conv2d), lname
        assert torch.equal(dense.weight.detach(), layer.export_weight()), lname
        if layer.bias is None:
            assert dense.bias is None, lname
        else:
            assert torch.equal(dense.bias.detach(), layer.bias.detach()), lname
        assert dense.weight.device.type == "cpu"
    # Rounded integers: the export is the decoder applied to the rounded latents.
    _, first = latent_layers[0]
    assert torch.equal(first.latent_int(), torch.round(first.latent.detach()))

    with torch.no_grad():
        expected = model(x)
        got = plain(x)
    assert got.shape == (8, 10)
    # float32 forward vs float64-decoded export: equal up to float32 rounding
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # decode copies: the LilNetX model is unchanged and shares nothing with the plain one.
    for (_, layer), lat in zip(latent_layers, latents_before, strict=True):
        assert torch.equal(layer.latent.detach(), lat)
    with torch.no_grad():
        dense_layers[0].weight.add_(1.0)
    assert not torch.equal(dense_layers[0].weight.detach(), latent_layers[0][1].export_weight())
    model.train()
    assert lilnetx.decode(model).training


def test_decode_rejects_a_plain_model():
    with pytest.raises(lilnetx.ConfigError, match="LilNetXModel"):
        lilnetx.decode(nn.Sequential(nn.Linear(2, 2)))


def _check_init(model: lilnetx.LilNetXModel, shape: tuple[int, ...]) -> None:
    for lname, layer in model.latent_layers():
        ints = layer.latent_int()
        nonzero = float((ints != 0).float().mean())
        assert nonzero > 0.1, f"{lname} {layer.weight_shape}: only {nonzero:.1%} non-zero latents"
        w = layer.export_weight()
        fan_out = w.shape[0] * (w.shape[2] * w.shape[3] if w.dim() == 4 else 1)
        ratio = float(w.std()) / math.sqrt(2.0 / fan_out)
        assert 0.2 < ratio < 5.0, f"{lname}: decoded std is {ratio:.2f} x sqrt(2 / fan_out)"
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(4, *shape))
    assert torch.isfinite(out).all()
    assert float((out - out[0]).abs().max()) > 1e-3, "the output does not depend on the input"


@pytest.mark.parametrize(("name", "shape"), [
    ("lenet5", (1, 28, 28)),
    ("resnet20", (3, 32, 32)),
    ("vgg16", (3, 32, 32)),
    ("tv:resnet18", (3, 32, 32)),
])
def test_init_gives_nontrivial_latents(name, shape):
    c, h, _ = shape
    net = lilnetx.create_model(name, in_channels=c, image_size=h, num_classes=10)
    _check_init(lilnetx.convert(net), shape)


def test_convert_does_not_share_latents_between_copies():
    model = _lenet_digits()
    twin = copy.deepcopy(model)
    for (_, a), (_, b) in zip(model.latent_layers(), twin.latent_layers(), strict=True):
        assert a.decoder is model.decoders[a.group]
        assert b.decoder is twin.decoders[b.group]  # sharing survives a deep copy
        assert b.decoder is not a.decoder
        assert torch.equal(a.export_weight(), b.export_weight())


@pytest.mark.parametrize("decoder", ["full", "diagonal", "scalar"])
def test_group_decoding_matches_per_layer_autograd(decoder):
    """The model's forward decodes each group in one block-diagonal product
    (``decode_group``); its output and every gradient equal those of the per-layer autograd
    formula (float64, so summation order cannot hide a wrong term)."""
    from lilnetx.core.latent import round_ste

    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        net = lilnetx.create_model("resnet20", in_channels=3, image_size=16, num_classes=10)
        model = lilnetx.convert(net, decoder=decoder, side_bits=0)
        model.train()
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))

        def run():
            model.zero_grad(set_to_none=True)
            out = model(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                  if p.grad is not None}

        fast_out, fast = run()
        model.decode_weights = lambda layers=None: {
            layer: layer.decoder(round_ste(layer.latent)).reshape(layer.weight_shape)
            for _, layer in model.latent_layers()}
        ref_out, ref = run()
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.allclose(fast_out, ref_out, rtol=1e-12, atol=1e-12)
    assert fast.keys() == ref.keys()
    for name in ref:
        assert torch.allclose(fast[name], ref[name], rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("rows", [1, 6, 8, 4096 + 16])
def test_round_decode_any_row_count(rows):
    """The fused rounding-and-decoding node (block-diagonal products of 4, 2 or 1 rows, a
    chunked reduction for the decoder's gradient) against autograd, in float64."""
    from lilnetx.core.latent import _RoundDecode, round_ste

    torch.manual_seed(rows)
    lat = (torch.randn(rows, 9, dtype=torch.float64) * 3).requires_grad_(True)
    mat = torch.randn(9, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(rows, 9, dtype=torch.float64)
    out = _RoundDecode.apply(lat, mat)
    out.backward(g)
    ref_lat = lat.detach().clone().requires_grad_(True)
    ref_mat = mat.detach().clone().requires_grad_(True)
    ref = round_ste(ref_lat) @ ref_mat
    ref.backward(g)
    assert torch.allclose(out, ref)
    assert torch.allclose(lat.grad, ref_lat.grad)
    assert torch.allclose(mat.grad, ref_mat.grad)
