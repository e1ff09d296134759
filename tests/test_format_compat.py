"""Files written before a change stay readable: the `.lnx` files of tests/data/format_v1 (one
per method, written by an earlier version) decode to the weights recorded when they were
written, bit for bit, and to the same logits (up to the float rounding of this CPU's conv
kernels: the recorded logits came from another machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lilnetx

DATA = Path(__file__).parent / "data" / "format_v1"


@pytest.mark.parametrize("method", ["lilnetx", "dense", "quant", "imp"])
def test_old_files_decode_to_the_same_network(method):
    net = lilnetx.load(DATA / f"{method}.lnx").eval()
    state = torch.load(DATA / f"{method}.state.pt", weights_only=True)
    got = net.state_dict()
    assert got.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(got[key], value), key
    x = torch.load(DATA / "inputs.pt", weights_only=True)
    expected = torch.load(DATA / f"{method}.logits.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5)
