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


V2 = Path(__file__).parent / "data" / "format_v2"
V2_FILES = ["lilnetx-full", "lilnetx-diagonal", "lilnetx-scalar", "dense", "quant", "imp"]


def _v2_digest(state):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_v2", V2 / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.digest(state)


@pytest.mark.parametrize("name", V2_FILES)
def test_version_2_files_decode_to_the_same_network(name):
    import json

    path = V2 / f"{name}.lnx"
    assert lilnetx.fileformat.read(path).version == 2
    net = lilnetx.load(path).eval()
    expected = json.loads((V2 / f"{name}.state.json").read_text())
    got = _v2_digest(net.state_dict())
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
    x = torch.load(V2 / "inputs.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(net(x), torch.load(V2 / f"{name}.logits.pt", weights_only=True),
                                   rtol=0, atol=1e-5)


def test_version_2_fixtures_cover_every_decoder_form():
    from lilnetx.fileformat import report

    forms = set()
    for name in V2_FILES:
        forms |= set((report.inspect(V2 / f"{name}.lnx").get("decoder_forms") or {}).values())
    assert {"full", "diagonal", "scalar"} <= forms
