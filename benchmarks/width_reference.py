"""How fast a uniformly thinner network is: the capacity reference of issue 17's targets.

Times the network of one ``.lnx`` file (the reference, e.g. ResNet-20 width 1 trained without the
channel prior) against the network of another (the same architecture at a smaller ``--width``,
trained from scratch with the same settings), side by side in one process, with the interleaved
torch-eager and ONNX Runtime timing of ``benchmarks/channel_prior.py`` (batch 1 and 64, 1 and 2
threads, medians), and gives their accuracies and MAC ratio. A thinner network that reaches the
reference's accuracy within a point at a MAC ratio the channel prior does not reach shows that the
architecture has the capacity, and that the prior's accuracy loss is one of optimization.

    lilnetx train --model resnet20 --dataset fashion_mnist --width 0.5 --limit 12000 \\
        --epochs 15 --batch-size 128 --lr 0.02 --device cpu --out /tmp/width/w0.5.lnx --json \\
        > /tmp/width/w0.5.json
    python benchmarks/width_reference.py --base /tmp/ch15ft/channel-0.lnx \\
        --base-json /tmp/ch15ft/channel-0.json --other /tmp/width/w0.5.lnx \\
        --other-json /tmp/width/w0.5.json --width 0.5 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
SECTION = "width_reference"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the reference network's .lnx file")
    ap.add_argument("--base-json", required=True, help="its summary (accuracy, settings)")
    ap.add_argument("--other", required=True, help="the thinner network's .lnx file")
    ap.add_argument("--other-json", required=True, help="its summary (`lilnetx train --json`)")
    ap.add_argument("--width", type=float, required=True, help="the thinner network's width")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from _report import command_line, machine_line, publish
    from channel_prior import measure

    base, other = (json.loads(Path(p).read_text()) for p in (args.base_json, args.other_json))
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    settings = {"rounds": args.rounds, "block": args.block}
    with tempfile.TemporaryDirectory() as work:
        measure({"path": args.base}, {"rounds": 2, "block": 1}, args.threads, Path(work),
                other=args.other)  # untimed first pass: the process's cold start
        m = measure({"path": args.base}, settings, args.threads, Path(work), other=args.other)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["## A uniformly thinner network: capacity and speed (issue 17 reference)", "",
             machine_line(), f"Load average before / after: {load_before} / {load_after}.", "",
             "Reproduce (the two trainings are in the script's docstring):", "", "```",
             command_line("benchmarks/width_reference.py", argv), "```", "",
             f"Reference: `{Path(args.base).name}`; thinner: `{Path(args.other).name}` (width "
             f"{args.width:g}). Both LilNetX ResNet-20s on Fashion-MNIST trained "
             "without the channel prior, the same data, epochs, lr and lambdas. Timing as in "
             f"the channel-prior sections: {args.rounds} interleaved rounds x {args.block} "
             "passes, medians, torch eager and ONNX Runtime.", "",
             "| network | test accuracy | size | MACs |",
             "|---|---:|---:|---:|",
             f"| reference | {100 * base['accuracy']:.2f}% | {base['size_bytes'] / 1000:.1f} KB "
             f"| {m['macs_dense'] / 1e6:.2f} M |",
             f"| thinner | {100 * other['accuracy']:.2f}% | {other['size_bytes'] / 1000:.1f} KB "
             f"| {m['macs_slim'] / 1e6:.2f} M ({m['mac_ratio']:.2f}x fewer) |", "",
             "| threads x batch | torch reference / thinner ms | speedup | ORT reference / "
             "thinner ms | speedup |", "|---|---:|---:|---:|---:|"]
    for key, v in m["latency"].items():
        lines.append(f"| {key.replace('x', ' x ')} | {v['torch_dense']:.2f} / "
                     f"{v['torch_slim']:.2f} | {v['torch_speedup']:.2f}x | "
                     f"{v['ort_dense']:.2f} / {v['ort_slim']:.2f} | {v['ort_speedup']:.2f}x |")
    publish("\n".join(lines), args.out, SECTION, write=bool(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
