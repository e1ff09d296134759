"""Write the format-version-2 fixtures: one LeNet-5 file per method (digits, 1 epoch; LilNetX
with each decoder form), the SHA-256 of every tensor of the decoded state dict (``.state.json``,
see :func:`digest`) and the logits on the first 8 test images.

Run once, from the repository root, when the format is frozen; the files are committed and
``tests/test_format_compat.py`` checks that every later reader decodes them bit for bit.

    python tests/data/format_v2/make_fixtures.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lilnetx import RunSpec, TrainConfig, fileformat, run

HERE = Path(__file__).resolve().parent
RUNS = {
    "lilnetx-full": ("lilnetx", {"decoder": "full"}),
    "lilnetx-diagonal": ("lilnetx", {"decoder": "diagonal", "side_bits": 6}),
    "lilnetx-scalar": ("lilnetx", {"decoder": "scalar"}),
    "dense": ("dense", {}),
    "quant": ("quant", {"bits": 4}),
    "imp": ("imp", {"target_sparsity": 0.8, "phases": 1, "retrain_epochs": 1}),
}


def digest(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Per state-dict key: ``dtype shape sha256-of-the-little-endian-bytes``."""
    out = {}
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        raw = t.view(torch.uint8) if t.numel() else t
        h = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
        out[key] = f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)} {h}"
    return out


def main() -> None:
    torch.manual_seed(0)
    for name, (method, options) in RUNS.items():
        out = run(RunSpec(model="lenet5", dataset="digits", method=method, options=options,
                          train=TrainConfig(epochs=1, batch_size=64, seed=0)))
        path = HERE / f"{name}.lnx"
        fileformat.write(out.method.encode(out.model, out.arch), path)
        net = fileformat.load(path)
        x = torch.stack([out.splits.test[i][0] for i in range(8)])
        torch.save(x, HERE / "inputs.pt")
        (HERE / f"{name}.state.json").write_text(json.dumps(digest(net.state_dict()), indent=1)
                                                 + "\n")
        with torch.no_grad():
            torch.save(net(x), HERE / f"{name}.logits.pt")
        print(name, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
