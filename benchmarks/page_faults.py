"""What glibc's handling of freed memory costs a CPU training step, plain and LilNetX.

For each allocator setting (``default``: glibc's own; ``keep``:
:func:`lilnetx.allocator.keep_freed_memory`, as :func:`lilnetx.train.fit` sets it), a fresh
interpreter builds ResNet-20 (width 4 by default) and the two trainers of
``benchmarks/train_step.py`` (plain PyTorch and LilNetX on one fixed batch of 128), warms each
up, then runs ``--steps`` steps of each and reports per step: minor page faults and user and
system CPU seconds (``getrusage``), and the resident set size after them (``/proc/self/statm``).
CPU seconds, not wall time: the counts are what the setting changes; train_step.py times it.

    python benchmarks/page_faults.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, machine_line, write_section  # noqa: E402

SECTION = "page_faults"

_CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, {bench!r})
import torch
from lilnetx.allocator import keep_freed_memory
from lilnetx import create_model
from train_step import lilnetx_stepper, plain_stepper
applied = keep_freed_memory() if {keep!r} else False
torch.set_num_threads({threads})
torch.manual_seed(0)
net = create_model("resnet20", in_channels=3, image_size=32, num_classes=10, width={width})
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
steppers = {{"plain": plain_stepper(net, x, y), "lilnetx": lilnetx_stepper(net, x, y, {width})}}
out = {{"applied": applied}}
for name, step in steppers.items():
    for _ in range({warmup}):
        step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range({steps}):
        step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out[name] = {{"faults": (r1.ru_minflt - r0.ru_minflt) / {steps},
                 "user_s": (r1.ru_utime - r0.ru_utime) / {steps},
                 "sys_s": (r1.ru_stime - r0.ru_stime) / {steps},
                 "rss_mb": int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20}}
print(json.dumps(out))
"""


def measure(keep: bool, width: float, threads: int, steps: int, warmup: int) -> dict:
    code = _CHILD.format(bench=str(Path(__file__).resolve().parent), keep=keep, width=width,
                         threads=threads, steps=steps, warmup=warmup)
    env = {k: v for k, v in __import__("os").environ.items() if k != "LILNETX_KEEP_FREED_MEMORY"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def render(results: dict, args, argv: list[str]) -> str:
    lines = [
        "## Page faults of a CPU training step (`lilnetx.allocator`)", "", machine_line(), "",
        f"Reproduce: `{command_line('benchmarks/page_faults.py', argv)}`", "",
        f"ResNet-20 width {args.width:g}, one fixed batch of 128, {args.threads} thread(s), the "
        f"trainers of `benchmarks/train_step.py`; per step, over {args.steps} steps after "
        f"{args.warmup} warm-up steps, each allocator setting in a fresh interpreter. RSS: "
        "resident size after the steps (the LilNetX trainer runs second, so its RSS includes "
        "the plain one's memory).", "",
        "| allocator | trainer | minor page faults / step | system s / step | user s / step | "
        "RSS after |", "|---|---|---:|---:|---:|---:|",
    ]
    for setting, r in results.items():
        for trainer in ("plain", "lilnetx"):
            t = r[trainer]
            lines.append(f"| {setting} | {trainer} | {t['faults']:,.0f} | {t['sys_s']:.3f} | "
                         f"{t['user_s']:.3f} | {t['rss_mb'] / 1024:.2f} GB |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    results = {}
    for setting, keep in (("default", False), ("keep", True)):
        results[setting] = measure(keep, args.width, args.threads, args.steps, args.warmup)
        print(setting, json.dumps(results[setting]), file=sys.stderr, flush=True)
    body = render(results, args, sys.argv[1:] if argv is None else argv)
    print(body)
    if args.out is not None:
        write_section(args.out, SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
