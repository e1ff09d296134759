"""The README's "Adding a method" example, run as written: its code block registers a method
that then trains, is stored in a `.lnx` file that decodes to what was measured, and takes its
parameter from RunSpec.options with its range checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import lilnetx
from lilnetx.experiment import RunSpec, finalize, run
from lilnetx.train import TrainConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### Adding a method"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def oneshot():
    from lilnetx.methods import METHODS

    if "oneshot" not in METHODS:
        exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    return METHODS.get("oneshot")


def test_the_readme_method_trains_stores_and_decodes(oneshot, tmp_path):
    spec = RunSpec(model="lenet5", dataset="digits", method="oneshot",
                   options={"sparsity": 0.8}, train=TrainConfig(epochs=1, batch_size=128))
    out = run(spec)
    summary = finalize(out, str(tmp_path / "m.lnx"), latency=False)
    assert summary["weight_sparsity"] >= 0.8 - 1e-6
    net = lilnetx.load(tmp_path / "m.lnx").eval()
    x = torch.stack([out.splits.test[i][0] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(net(x), out.plain.eval()(x))
    assert "oneshot" in lilnetx.method_names()


def test_the_readme_method_checks_its_parameter(oneshot):
    with pytest.raises(lilnetx.ConfigError, match=r"sparsity must be in \[0, 0.99\]"):
        RunSpec(method="oneshot", options={"sparsity": 1.5}).validate()
