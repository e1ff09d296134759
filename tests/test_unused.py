"""What no output reads is written as zeros (lilnetx.deploy.unused): the file shrinks and the
decoded network computes exactly what the trained one does."""

from __future__ import annotations

import torch

import lilnetx
from lilnetx import fileformat
from lilnetx.core.model import decode
from lilnetx.deploy.unused import drop_unused, unused_entries
from lilnetx.fileformat import archspec
from lilnetx.methods import create_method


def _model(name: str, decoder: str, side_bits: int = 8):
    torch.manual_seed(0)
    net = lilnetx.create_model(name, in_channels=1, image_size=28, num_classes=10)
    model = lilnetx.convert(net, decoder=decoder, side_bits=side_bits)
    model.arch = archspec.registry_arch(name, in_channels=1, image_size=28, num_classes=10,
                                        data={"name": "fashion_mnist"})
    return model


def _lenet_with_dead_channels(decoder="diagonal", side_bits=8):
    """conv2 reads nothing of conv1's channel 2; conv2's channel 5 is a constant that the ReLU
    makes zero (all-zero weights, negative bias) and the largest bias of its layer, so that
    zeroing it moves the layer's quantization grid."""
    model = _model("lenet5", decoder, side_bits)
    layers = dict(model.latent_layers())
    conv2 = layers["0.3"]
    with torch.no_grad():
        conv2.latent.view(16, 6, -1)[:, 2] = 0
        conv2.latent.view(16, 6, -1)[5] = 0
        conv2.bias[5] = -0.5
    return model


def _outputs(model, x):
    with torch.no_grad():
        return decode(model).eval()(x)


def test_unread_channels_and_dead_reads_are_found():
    model = _lenet_with_dead_channels()
    masks = unused_entries(decode(model).eval(), torch.randn(2, 1, 28, 28))
    assert masks["0.0.bias"].nonzero().flatten().tolist() == [2]
    assert masks["0.0.weight"][2].all() and not masks["0.0.weight"][[0, 1, 3, 4, 5]].any()
    assert masks["0.3.bias"].nonzero().flatten().tolist() == [5]
    # the flattened features of conv2's channel 5 (5 x 5 positions) are no longer read by fc1
    read = masks["1.weight"].any(dim=0).nonzero().flatten()
    assert read.tolist() == list(range(5 * 25, 6 * 25))


def test_zeroing_keeps_every_output_and_shrinks_the_file(tmp_path):
    model = _lenet_with_dead_channels()
    x = torch.randn(32, 1, 28, 28)
    slim_model, dropped = drop_unused(model, torch.randn(2, 1, 28, 28))
    assert dropped.latent_slices > 2000 and dropped.side_entries == 2
    assert torch.equal(_outputs(model, x), _outputs(slim_model, x))
    assert torch.equal(dict(slim_model.latent_layers())["0.3"].bias[5], torch.tensor(0.0))
    assert model is not slim_model and float(dict(model.latent_layers())["0.3"].bias[5].detach()) == -0.5
    plain_bytes = fileformat.encode_model(model, model.arch)
    method_bytes = create_method("lilnetx", decoder="diagonal").encode(model, model.arch)
    assert len(method_bytes) < len(plain_bytes) - 50
    fileformat.write(method_bytes, tmp_path / "m.lnx")
    net = fileformat.load(tmp_path / "m.lnx")
    with torch.no_grad():
        assert torch.equal(net.eval()(x), _outputs(model, x))


def test_side_bits_0_and_full_decoders_are_exact_too():
    for decoder, side_bits in (("full", 0), ("full", 8), ("scalar", 6)):
        model = _lenet_with_dead_channels(decoder, side_bits)
        x = torch.randn(16, 1, 28, 28)
        slim_model, dropped = drop_unused(model, torch.randn(2, 1, 28, 28))
        assert dropped.side_entries >= 1
        assert torch.equal(_outputs(model, x), _outputs(slim_model, x)), (decoder, side_bits)


def test_a_resnet_channel_coupled_across_a_residual_goes_with_its_batchnorm():
    model = _model("resnet20", "full")
    model.eval()
    layers = dict(model.latent_layers())
    # the first block's inner channel 3: its reader (the block's second conv) reads nothing of
    # it, so conv1's output channel 3 and its BatchNorm entries serve no output
    first = "layers.0.conv1"
    second = first.replace("conv1", "conv2")
    w = layers[second]
    out_c, in_c = w.weight_shape[:2]
    with torch.no_grad():
        w.latent.view(out_c, in_c, -1)[:, 3] = 0
    x = torch.randn(8, 1, 28, 28)
    slim_model, dropped = drop_unused(model, torch.randn(2, 1, 28, 28))
    assert dropped.latent_slices >= 1 and dropped.side_entries >= 1
    assert torch.equal(_outputs(model, x), _outputs(slim_model, x))
    bn = dict(slim_model.net.named_modules())[first.replace("conv1", "bn1")]
    assert float(bn.weight[3]) == 0.0 and float(bn.bias[3]) == 0.0


def test_nothing_unread_means_the_same_bytes():
    model = _model("lenet5", "diagonal")
    assert create_method("lilnetx", decoder="diagonal").encode(model, model.arch) == \
        fileformat.encode_model(model, model.arch)


def test_a_quantized_plain_network_drops_its_unread_channels_too(tmp_path):
    from lilnetx.core.sidequant import quantize_side_state
    from lilnetx.deploy.unused import drop_unused_plain
    from lilnetx.fileformat import encode_plain
    from lilnetx.methods.quantize import apply_quantization, quantize_layers

    torch.manual_seed(0)
    net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10).eval()
    with torch.no_grad():
        net[0][3].weight[:, 2] = 0  # conv2 reads nothing of conv1's channel 2
    q = quantize_layers(net, 4)
    apply_quantization(net, q)
    quantize_side_state(net, 8, {f"{n}.weight" for n in q})
    arch = archspec.registry_arch("lenet5", in_channels=1, image_size=28, num_classes=10,
                                  data={"name": "fashion_mnist"})
    slim_net, slim_q = drop_unused_plain(net, q, torch.randn(2, 1, 28, 28))
    assert not slim_q["0.0"][0].reshape(6, 25)[2].any() and q["0.0"][0].reshape(6, 25)[2].any()
    assert float(slim_net[0][0].bias[2]) == 0.0
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(slim_net(x), net(x))
    plain = encode_plain(net, arch, q)
    method = create_method("quant", bits=4)
    method.quantized = q
    dropped = method.encode(net, arch)
    assert len(dropped) < len(plain)
    fileformat.write(dropped, tmp_path / "q.lnx")
    with torch.no_grad():
        assert torch.equal(fileformat.load(tmp_path / "q.lnx").eval()(x), net(x))
