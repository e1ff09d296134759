"""How many operations a LilNetX training step dispatches, and where: the LeNet-5 rate's cost.

Counts every ATen operation one LilNetX step dispatches (forward, joint loss, backward, both
Adam steps; batch 128, the default rate table), by the ``lilnetx`` module whose code called it
(a ``TorchDispatchMode``; operations called from torch's own modules, the network's layers and
the autograd engine, are counted as ``torch``), beside the same count for a plain step. Then
times, alone and interleaved (medians), the density network's fused pass over the dense
group's table grid with and without its gradients, and one operation on a 3-element tensor:
what an operation costs when there is almost no arithmetic in it.

    python benchmarks/rate_ops.py                     # LeNet-5, 1 thread
    python benchmarks/rate_ops.py --threads 2 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lilnetx import create_model
from lilnetx.allocator import keep_freed_memory
from lilnetx.core.entropy import _bits_and_grads
from lilnetx.core.model import convert
from lilnetx.core.rate_table import DEFAULT_POINTS, _grid_weights
from lilnetx.train import TrainConfig, adam, joint_loss, make_optimizers


class _Count(TorchDispatchMode):
    """Dispatched operations by the ``lilnetx`` file that called them."""

    def __init__(self):
        super().__init__()
        self.by_file: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        where = "torch"
        for frame in reversed(traceback.extract_stack()):
            if "/lilnetx/" in frame.filename:
                where = frame.filename.rsplit("/lilnetx/", 1)[1]
                break
        self.by_file[where] += 1
        return func(*args, **(kwargs or {}))


def _median_us(fn, rounds: int, inner: int = 20) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
    model = convert(net)
    model.train()
    cfg = TrainConfig(lr=1e-3)
    opts = make_optimizers(model, cfg)
    plain_opt = adam(list(net.parameters()), 1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def lilnetx_step() -> None:
        loss = joint_loss(model, model(x), y, cfg)["loss"]
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    def plain_step() -> None:
        loss = F.cross_entropy(net(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    counts = {}
    for name, step in (("lilnetx", lilnetx_step), ("plain", plain_step)):
        step()  # optimizer states exist
        with _Count() as c:
            step()
        counts[name] = dict(c.by_file.most_common())

    prior = model.priors["dense"]
    lat = torch.cat([layer.latent.detach() for _, layer in model.groups()["dense"]])
    rows = lat + torch.empty_like(lat).uniform_(-0.5, 0.5)
    sp = [F.softplus(m).detach() for m in prior.matrices]
    tf = [torch.tanh(f).detach() for f in prior.factors]
    b = [t.detach() for t in prior.biases]
    grid, _, _, weights = _grid_weights(rows, DEFAULT_POINTS)
    tiny = torch.ones(1, 3, 1)
    timed = {
        "dense grid pass with gradients": lambda: _bits_and_grads(
            grid, sp, b, tf, need_grad=True, weights=weights, chunk=grid.numel()),
        "dense grid pass without gradients": lambda: _bits_and_grads(
            grid, sp, b, tf, need_grad=False, weights=weights, chunk=grid.numel()),
        "one multiply of a 3-element tensor": lambda: torch.mul(tiny, 2.0),
    }
    us = {k: [] for k in timed}
    for r in range(args.rounds):
        for k in (list(timed) if r % 2 == 0 else list(timed)[::-1]):
            us[k].append(_median_us(timed[k], 1))
    us = {k: statistics.median(v) for k, v in us.items()}
    out = {"threads": args.threads, "grid_points": int(grid.shape[1]), "ops": counts,
           "microseconds": us}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for name, c in counts.items():
        print(f"{name} step: {sum(c.values())} dispatched ops; by caller: "
              + ", ".join(f"{k} {v}" for k, v in c.items()))
    rate = sum(v for k, v in counts["lilnetx"].items() if k in ("core/entropy.py",
                                                               "core/rate_table.py"))
    print(f"the rate (core/entropy.py + core/rate_table.py): {rate} ops")
    print(f"dense grid: {out['grid_points']:,} points ({2 * out['grid_points']:,} evaluations)")
    for k, v in us.items():
        print(f"{k}: {v:,.1f} us (median of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
