"""``slim(..., round_to=N)``: kept channel counts rounded up to a multiple of N (or the full
width), outputs unchanged, and ``round_to=None`` exactly today's slimming."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_slim import (
    CASES,
    assert_same_function,
    calibrate,
    nonzero_latents,
    shapes,
    zero_inputs,
)

import lilnetx
from lilnetx.deploy.slimming import rounded_plan, slim

warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")

# zeroed reads {reader layer: channels} chosen so that the unrounded kept counts are not
# multiples of 8 (and, for some layers, rounding up would exceed the width)
ZEROS = {
    "lenet5": {"0.3": [1, 4], "3": list(range(3, 23))},  # 0.0: 6 -> 4, 1: 120 -> 100
    "resnet20": {"layers.0.conv2": [0, 3], "layers.4.conv2": list(range(10)),
                 "layers.7.conv2": [2, 5, 9, 11, 40]},  # 16 -> 14, 32 -> 22, 64 -> 59
    "residual": {"conv1": [0, 1, 2, 3, 4], "head": [0, 1, 2, 3, 4],
                 "conv2": [1, 4, 5, 6, 7], "fc": [1]},  # stem 8 -> 3, conv1 8 -> 3, head 6 -> 5
}


def _model(name: str) -> tuple[lilnetx.LilNetXModel, torch.Tensor]:
    build, (c, s), _, _ = CASES[name]
    torch.manual_seed(0)
    model = lilnetx.convert(build())
    nonzero_latents(model)
    calibrate(model, torch.randn(8, c, s, s, generator=torch.Generator().manual_seed(3)))
    for layer, channels in ZEROS[name].items():
        zero_inputs(model, layer, channels)
    x = torch.randn(4, c, s, s, generator=torch.Generator().manual_seed(2))
    return model, x


def _out(net) -> dict[str, int]:
    return {k: o for k, (_, o) in shapes(net).items()}


@pytest.mark.parametrize("name,round_to", [
    ("lenet5", 8), ("lenet5", 3), ("residual", 4), ("resnet20", 8),
])
def test_round_to_rounds_kept_channels_up_and_keeps_the_function(name, round_to):
    model, x = _model(name)
    plain = lilnetx.decode(model).eval()
    dense, unrounded = _out(plain), _out(slim(model, x[:1]))
    rounded_net = slim(model, x[:1], round_to=round_to)
    got = _out(rounded_net)
    assert got.keys() == dense.keys()
    for layer, k in got.items():
        d, n = dense[layer], unrounded[layer]
        assert k == d or k % round_to == 0, (layer, k, d)
        assert k == min(d, -(-n // round_to) * round_to), (layer, n, k, d)
    assert sum(got.values()) > sum(unrounded.values())  # rounding put channels back
    assert sum(got.values()) < sum(dense.values())  # and something is still removed
    assert_same_function(plain, rounded_net, x)


def test_round_to_on_resnet20_gives_the_expected_widths():
    model, x = _model("resnet20")
    got = shapes(slim(model, x[:1], round_to=8))
    assert got["layers.0.conv1"] == (16, 16)  # 14 rounds up to 16, the full width
    assert got["layers.4.conv1"] == (32, 24)  # 22 -> 24
    assert got["layers.4.conv2"] == (24, 32)
    assert got["layers.7.conv1"] == (64, 64)  # 59 -> 64, the full width
    unrounded = shapes(slim(model, x[:1]))
    assert unrounded["layers.4.conv1"] == (32, 22) and unrounded["layers.7.conv1"] == (64, 59)


def test_round_to_none_and_one_are_todays_slimming():
    for name in ("lenet5", "resnet20"):
        model, x = _model(name)
        today = slim(model, x[:1])
        for net in (slim(model, x[:1], round_to=None), slim(model, x[:1], round_to=1)):
            assert shapes(net) == shapes(today)
            sa, sb = today.state_dict(), net.state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the CASES expectations of test_slim hold with the default
    build, (c, s), zeros, expected = CASES["lenet5"]
    model = lilnetx.convert(build())
    nonzero_latents(model)
    for layer, channels in zeros.items():
        zero_inputs(model, layer, channels)
    got = shapes(lilnetx.slim(model, torch.randn(1, c, s, s)))
    assert all(got[k] == v for k, v in expected.items())


def test_rounded_plan():
    idx = [1, 2, 5, 7, 9]  # 16 channels, 11 kept
    assert rounded_plan(16, idx, None) == idx
    assert rounded_plan(16, idx, 1) == idx
    assert rounded_plan(16, idx, 4) == [1, 2, 5, 7, 9][:4]  # 12 kept
    assert rounded_plan(16, idx, 8) == []  # 16 kept: the full width
    assert rounded_plan(12, [0, 3], 8) == []  # 10 -> 16 capped at 12
    assert rounded_plan(40, list(range(39)), 8) == list(range(32))  # 1 -> 8 kept


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_round_to_must_be_a_positive_integer(bad):
    model, x = _model("residual")
    with pytest.raises(lilnetx.LilNetXError, match="round_to"):
        slim(model, x[:1], round_to=bad)


@pytest.mark.parametrize("name,round_to", [("residual", 4), ("lenet5", 8), ("resnet20", 16)])
def test_round_narrow_false_leaves_groups_under_round_to_alone(name, round_to):
    """``round_narrow=False``: a kept count under ``round_to`` stays (a first stage left with
    1 channel is not padded back to 16); wider ones round up as before; outputs unchanged."""
    model, x = _model(name)
    plain = lilnetx.decode(model).eval()
    dense, unrounded = _out(plain), _out(slim(model, x[:1]))
    net = slim(model, x[:1], round_to=round_to, round_narrow=False)
    got = _out(net)
    narrow = 0
    for layer, k in got.items():
        d, n = dense[layer], unrounded[layer]
        if n < round_to:
            narrow += 1
            assert k == n, (layer, n, k)
        else:
            assert k == min(d, -(-n // round_to) * round_to), (layer, n, k, d)
    assert narrow  # the case has a group left narrower than round_to
    assert sum(got.values()) < sum(_out(slim(model, x[:1], round_to=round_to)).values())
    assert_same_function(plain, net, x)
    assert rounded_plan(16, list(range(1, 16)), 16, round_narrow=False) == list(range(1, 16))
    assert rounded_plan(16, list(range(1, 16)), 16) == []
