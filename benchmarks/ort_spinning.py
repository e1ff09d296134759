"""Several ONNX Runtime sessions timed in turn in one process: with and without intra-op spinning.

The slim-speedup benchmarks time the dense and the slim network's ONNX Runtime sessions in
interleaved rounds. ONNX Runtime's intra-op threads spin-wait after a run by default, so on a
small machine the threads of the session that just ran can hold the cores while the next session
starts. This script measures it on copies of one network: ``--copies`` sessions of the same ONNX
file, timed in interleaved rounds exactly as ``benchmarks/channel_prior.py`` does, once with
spinning on (ONNX Runtime's default) and once with it off
(``lilnetx.deploy.latency.onnx_session(..., spinning=False)``). The copies are the same network,
so any spread between their medians is the measurement's own error.

    python benchmarks/ort_spinning.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
SECTION = "ort_spinning"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    from _report import command_line, machine_line, publish
    from channel_prior import interleaved

    import lilnetx
    from lilnetx.deploy.export import export_onnx
    from lilnetx.deploy.latency import onnx_session

    torch.manual_seed(0)
    net = lilnetx.create_model(args.model, in_channels=1, image_size=28, num_classes=10).eval()
    x = np.random.default_rng(0).standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    load = [" ".join(f"{v:.2f}" for v in os.getloadavg())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        export_onnx(net, torch.randn(1, 1, 28, 28), path)
        for spinning in (True, False):
            sessions = [onnx_session(path, threads=args.threads, spinning=spinning)
                        for _ in range(args.copies)]
            name = sessions[0].get_inputs()[0].name
            ms = interleaved({f"copy {i + 1}": (lambda s=s, f={name: x}: s.run(None, f))
                              for i, s in enumerate(sessions)}, args.rounds, args.block)
            rows.append((spinning, ms))
    load.append(" ".join(f"{v:.2f}" for v in os.getloadavg()))
    lines = ["## ONNX Runtime sessions timed in turn: intra-op spinning", "", machine_line(),
             f"Load average before / after: {load[0]} / {load[1]}.", "", "Reproduce:", "",
             "```", command_line("benchmarks/ort_spinning.py", argv), "```", "",
             f"{args.copies} ONNX Runtime sessions of one `{args.model}` ONNX file (random "
             f"weights, 1x28x28 input, batch {args.batch}, {args.threads} intra-op threads, one "
             "inter-op thread, all graph optimizations), timed in "
             f"{args.rounds} interleaved rounds x {args.block} passes (the order alternating "
             "between rounds), medians in ms, as the slim-speedup benchmarks time the dense and "
             "the slim networks. The copies are one network: the spread of their medians is the "
             "error of the measurement.", "",
             "| intra-op spinning | " + " | ".join(rows[0][1]) + " | slowest / fastest |",
             "|---|" + "---:|" * (len(rows[0][1]) + 1)]
    for spinning, ms in rows:
        v = list(ms.values())
        lines.append(f"| {'on (default)' if spinning else 'off'} | "
                     + " | ".join(f"{m:.2f}" for m in v) + f" | {max(v) / min(v):.2f}x |")
    spread = {s: max(ms.values()) / min(ms.values()) for s, ms in rows}
    lines += ["", f"With spinning on, one network's sessions differ by {spread[True]:.2f}x "
              f"between their medians; with it off by {spread[False]:.2f}x. The channel-prior "
              "and width-reference benchmarks time their ONNX Runtime sessions with spinning "
              "off (`onnx_session(..., spinning=False)`).", ""]
    publish("\n".join(lines), args.out, SECTION, write=bool(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
