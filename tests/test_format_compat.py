"""Files written before a change stay readable: the `.lnx` files of tests/data/format_v1 (one
per method, written by an earlier version) decode to the logits recorded when they were
written, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lilnetx

DATA = Path(__file__).parent / "data" / "format_v1"


@pytest.mark.parametrize("method", ["lilnetx", "dense", "quant", "imp"])
def test_old_files_decode_to_the_same_network(method):
    net = lilnetx.load(DATA / f"{method}.lnx").eval()
    x = torch.load(DATA / "inputs.pt", weights_only=True)
    expected = torch.load(DATA / f"{method}.logits.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(net(x), expected)
