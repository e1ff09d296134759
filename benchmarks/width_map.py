"""Which ResNet-20 shapes run 2x faster: latency of structured widths, torch eager and ONNX Runtime.

Issue 17's targets ask for a slim ResNet-20 at least 2x faster than its dense network at batch
64 with 2 threads, in torch and in ONNX Runtime. Which widths can do that does not depend on
training: this script takes the Fashion-MNIST ResNet-20 (width 1, random weights), removes
channels with Torch-Pruning's dependency graph until every stage has the residual-stream width
and the inner (conv1) width given, and times each shape against the dense network in the
interleaved rounds of ``benchmarks/channel_prior.py`` (medians), with its MAC ratio
(``lilnetx.count_macs``). A shape is written ``r1/r2/r3 : i1/i2/i3`` (residual widths of the
three stages : conv1 widths of their blocks). ONNX Runtime runs a conv in its blocked NCHWc
layout only when its output channels are a multiple of the block (16 with AVX-512, 8 with AVX2)
and its input channels are too or fewer than one block (``nchwc_transformer.cc``); other convs
fall back to the plain NCHW path, so the shapes include widths that are multiples of 16.

    python benchmarks/width_map.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
SECTION = "width_map"

SHAPES = {
    "dense": ((16, 32, 64), (16, 32, 64)),
    "uniform half": ((8, 16, 32), (8, 16, 32)),
    "inner half": ((16, 32, 64), (8, 16, 32)),
    "stages 2-3 half": ((16, 16, 32), (16, 16, 32)),
    "stage 3 half": ((16, 32, 32), (16, 32, 32)),
    "stage 1 at 1": ((1, 32, 64), (1, 32, 64)),
    "stage 1 at 1, inner 2 half": ((1, 32, 64), (1, 16, 64)),
    "stage 1 at 1, stage 2 half": ((1, 16, 64), (1, 16, 64)),
    "stage 1 at 1, stage 2 half, inner 3 half": ((1, 16, 64), (1, 16, 32)),
    "stage 1 half, inner quarter": ((8, 32, 64), (4, 8, 16)),
    "residual full, inner quarter": ((16, 32, 64), (4, 8, 16)),
    "stages 2-3 half, inner quarter": ((16, 16, 32), (4, 4, 8)),
    "residual 16/32/48, inner 8/16/32": ((16, 32, 48), (8, 16, 32)),
    "residual 16/16/32, inner 8/16/16": ((16, 16, 32), (8, 16, 16)),
    "multiples of 16: 16/16/32 : 16/16/16": ((16, 16, 32), (16, 16, 16)),
    "multiples of 16: 16/32/32 : 16/16/16": ((16, 32, 32), (16, 16, 16)),
    "multiples of 16: all 16": ((16, 16, 16), (16, 16, 16)),
}


def shaped(residual: tuple[int, ...], inner: tuple[int, ...]) -> torch.nn.Module:
    """ResNet-20 (1 x 28 x 28 in, 10 classes) with the given stage widths (Torch-Pruning)."""
    import torch_pruning as tp

    from lilnetx import create_model

    torch.manual_seed(0)
    net = create_model("resnet20", in_channels=1, image_size=28, num_classes=10).eval()
    x = torch.randn(1, 1, 28, 28)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    blocks = list(net.layers)
    for stage in range(3):
        first = blocks[3 * stage]
        writer = net.conv1 if stage == 0 else first.conv2
        have = writer.out_channels
        if residual[stage] < have:  # the whole stream: every writer and reader, one group
            dg.get_pruning_group(writer, tp.prune_conv_out_channels,
                                 idxs=list(range(residual[stage], have))).prune()
        for b in blocks[3 * stage:3 * stage + 3]:
            have = b.conv1.out_channels
            if inner[stage] < have:
                dg.get_pruning_group(b.conv1, tp.prune_conv_out_channels,
                                     idxs=list(range(inner[stage], have))).prune()
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import numpy as np
    from _report import command_line, machine_line, publish
    from channel_prior import interleaved

    from lilnetx import count_macs
    from lilnetx.deploy.export import export_onnx
    from lilnetx.deploy.latency import onnx_session, torch_threads

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    example = torch.randn(1, 1, 28, 28)
    nets = {k: shaped(*v) for k, v in SHAPES.items()}
    macs = {k: count_macs(n, example)["flops"] for k, n in nets.items()}
    x = torch.randn(args.batch, 1, 28, 28)
    xn = x.numpy().astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        sessions = {}
        for k, n in nets.items():
            p = Path(d) / f"{len(sessions)}.onnx"
            export_onnx(n, example, p)
            sessions[k] = onnx_session(str(p), threads=args.threads, spinning=False)
        for k in nets:
            if k == "dense":
                continue
            print(f"[width_map] {k}", file=sys.stderr, flush=True)
            with torch_threads(args.threads), torch.inference_mode():
                t = interleaved({"dense": lambda: nets["dense"](x), k: lambda k=k: nets[k](x)},
                                args.rounds, args.block)
            feeds = {n: {sessions[n].get_inputs()[0].name: xn} for n in ("dense", k)}
            o = interleaved({n: (lambda n=n, f=feeds: sessions[n].run(None, f[n]))
                             for n in ("dense", k)}, args.rounds, args.block)
            rows.append({"shape": k, "widths": SHAPES[k], "mac_ratio": macs["dense"] / macs[k],
                         "torch": (t["dense"], t[k]), "ort": (o["dense"], o[k])})
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "## Which ResNet-20 shapes run 2x faster (issue 17 reference)", "", machine_line(),
        f"Load average before / after: {load_before} / {load_after}.", "",
        f"Reproduce: `{command_line('benchmarks/width_map.py', argv)}`", "",
        "Fashion-MNIST ResNet-20 (width 1, 1 x 28 x 28, random weights) cut to the widths given "
        "with Torch-Pruning's dependency graph: `r1/r2/r3 : i1/i2/i3` are the residual-stream "
        "widths of the three stages and the conv1 widths of their blocks. Each shape timed "
        f"against the dense network at batch {args.batch} with {args.threads} threads, "
        f"{args.rounds} interleaved rounds x {args.block} calls, medians; ONNX Runtime on the "
        "exported ONNX (CPU provider, all graph optimizations, intra-op spinning off). Speedup "
        "= dense / shape; MAC gap = MAC ratio / torch speedup.", "",
        "| shape | widths | MAC ratio | torch dense / shape ms | torch speedup | MAC gap | "
        "ORT dense / shape ms | ORT speedup |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tr, ti = r["widths"]
        td, ts = r["torch"]
        od, os_ = r["ort"]
        w = "/".join(map(str, tr)) + " : " + "/".join(map(str, ti))
        lines.append(f"| {r['shape']} | {w} | {r['mac_ratio']:.2f}x | {td:.2f} / {ts:.2f} | "
                     f"{td / ts:.2f}x | {r['mac_ratio'] * ts / td:.2f} | {od:.2f} / {os_:.2f} | "
                     f"{od / os_:.2f}x |")
    both = [r["shape"] for r in rows
            if r["torch"][0] / r["torch"][1] >= 2 and r["ort"][0] / r["ort"][1] >= 2]
    lines += ["", "Shapes at least 2x faster in both runtimes: "
              + (", ".join(both) if both else "none") + ".", ""]
    publish("\n".join(lines), args.out, SECTION, write=bool(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
