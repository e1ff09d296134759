"""Training-step overhead of LilNetX against plain PyTorch training, on the CPU.

For each case the same network is trained two ways on one fixed random batch:

* **plain**: the unconverted network, cross-entropy, one Adam (fused, as LilNetX's);
* **LilNetX**: the converted network, the joint loss of :func:`lilnetx.train.joint_loss`
  (CE + lambda_rate * bits / N_rows + lambda_l2 * l2 + lambda_sparsity * slices), backward, and
  the two Adam optimizers of :func:`lilnetx.train.make_optimizers`.

Both run in one process with a fixed thread count, after warm-up steps, interleaved: every round
runs a block of plain steps and a block of LilNetX steps (the order alternates between rounds), so
slow drifts of a shared machine hit both alike. Every step is timed on its own; the report gives
the median per-step time of each and the ratio of the medians. A block lasts about
``--block-seconds`` (its step count is set from the warm-up), so cheap and costly cases get
comparable wall time.

Both run where glibc keeps the memory a step frees (:func:`lilnetx.allocator.keep_freed_memory`,
as :func:`lilnetx.train.fit` sets it); ``--allocator default`` measures under glibc's own
settings, where every large freed tensor is faulted in again in the next step.

``--reference`` adds a third trainer, interleaved with the other two: the same LilNetX model with
the rate, the penalties and the weight decoding computed by the plain autograd formulations the
library keeps for reference (``FactorizedPrior.likelihood``, ``priors.slice_group_lasso`` and
``priors.l2_prior``, ``latent.round_ste``): the cost before the fused implementations.

    python benchmarks/train_step.py                 # full run, a table on stdout
    python benchmarks/train_step.py --quick --json  # fast run, JSON on stdout
    python benchmarks/train_step.py --out docs/benchmarks.md  # (re)write its section there
    python benchmarks/train_step.py --reference     # also time the autograd reference path
    python benchmarks/train_step.py --no-rate       # also time LilNetX without its rate term
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from lilnetx import create_model
from lilnetx.allocator import keep_freed_memory
from lilnetx.core.latent import round_ste
from lilnetx.core.model import LilNetXModel, convert
from lilnetx.core.priors import l2_prior, slice_group_lasso
from lilnetx.train import TrainConfig, adam, joint_loss, make_optimizers

SECTION = "train_step"
EXTRAS = {
    "exact": ("exact", "Exact: the same LilNetX step with `rate_table` 0 (the prior evaluated at "
              "every latent), timed in the same interleaved rounds."),
    "norate": ("without rate", "Without rate: the same LilNetX step without the rate term "
               "(CE, slice and L2 penalties, weight decoding, both Adam steps), timed in the same "
               "interleaved rounds: what the method costs besides the rate."),
    "reference": ("reference", "Reference: the same LilNetX step with the rate, the penalties "
                  "and the weight decoding through the plain autograd formulas "
                  "(`FactorizedPrior.likelihood`, `priors.slice_group_lasso`/`l2_prior`, "
                  "`latent.round_ste`), i.e. before the fused implementations; timed in the "
                  "same interleaved rounds."),
}
"""Optional trainers timed beside plain and LilNetX: key -> (column name, description)."""
TARGETS = {"resnet20-w1": 1.05, "resnet20-w4": 1.05, "lenet5": 1.25}
"""Issue 15's targets: LilNetX / plain, ratio of the medians."""

# name, model, input channels, image size, width
CASES: list[tuple[str, str, int, int, float]] = [
    ("resnet20-w1", "resnet20", 3, 32, 1.0),
    ("resnet20-w4", "resnet20", 3, 32, 4.0),
    ("lenet5", "lenet5", 1, 28, 1.0),
]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def plain_stepper(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One plain training step: forward, CE, backward, Adam (the same fused Adam as LilNetX's,
    :func:`lilnetx.train.adam`, so the ratio is the method's cost, not the optimizer's)."""
    opt = adam(list(net.parameters()), 1e-3)
    net.train()

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def use_reference_path(model: LilNetXModel) -> None:
    """Route ``model``'s rate, penalties and decoding through the autograd reference formulas.

    Instance attributes only: other models in the process keep the library's implementation.
    """
    def ref_bits(prior, x, table=None):
        return -torch.log2(prior.likelihood(x)).sum()

    def ref_slice(self):
        terms = [slice_group_lasso(layer.latent) for _, layer in self.latent_layers()
                 if layer.latent.shape[1] > 1]
        return torch.stack(terms).sum() if terms else self._zero()

    def ref_l2(self):
        return torch.stack([l2_prior(layer.latent) for _, layer in self.latent_layers()]).sum()

    def ref_decoded_weight(layer):
        return layer.decoder(round_ste(layer.latent)).reshape(layer.weight_shape)

    def ref_decode_weights(self, layers=None):
        return {layer: layer.decoded_weight()
                for _, layer in (self.latent_layers() if layers is None else layers)}

    for prior in model.priors.values():
        prior.bits = types.MethodType(ref_bits, prior)
    model.slice_penalty = types.MethodType(ref_slice, model)
    model.l2_penalty = types.MethodType(ref_l2, model)
    model.decode_weights = types.MethodType(ref_decode_weights, model)
    for _, layer in model.latent_layers():
        layer.decoded_weight = types.MethodType(ref_decoded_weight, layer)


def lilnetx_stepper(net: nn.Module, x: torch.Tensor, y: torch.Tensor, width: float,
                    reference: bool = False, rate_table: int | None = None, rate: bool = True,
                    ) -> Callable[[], None]:
    """One LilNetX training step, as :func:`lilnetx.train.fit` runs it (``rate_table``: the
    training rate's grid, ``None`` the default, 0 the exact evaluation). ``rate=False``: the
    same step without the rate term (CE and the penalties; the priors get no gradient and
    their Adam skips them), which is what the rest of the method costs."""
    model = convert(net, width=width)
    if reference:
        use_reference_path(model)
    cfg = TrainConfig(lr=1e-3)  # reference lambdas; a small lr keeps a long run stable
    if rate_table is not None:
        cfg.rate_table = rate_table
    opts = make_optimizers(model, cfg)
    model.train()

    def loss_without_rate(logits: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(logits, y) + cfg.lambda_sparsity * model.slice_penalty()
                + cfg.lambda_l2 * model.l2_penalty())

    def step() -> None:
        logits = model(x)
        loss = joint_loss(model, logits, y, cfg)["loss"] if rate else loss_without_rate(logits)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    return step


def timed_block(step: Callable[[], None], n: int, out: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)


def run_case(name: str, model: str, channels: int, size: int, width: float, *, batch: int,
             warmup: int, rounds: int, block: int | None, block_seconds: float, seed: int,
             reference: bool, exact: bool = False, no_rate: bool = False) -> dict:
    torch.manual_seed(seed)
    net = create_model(model, in_channels=channels, image_size=size, num_classes=10, width=width)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    # convert() deep-copies, so the trainers start from the same weights and stay independent.
    steppers = {"plain": plain_stepper(net, x, y), "lilnetx": lilnetx_stepper(net, x, y, width)}
    if reference:
        steppers["reference"] = lilnetx_stepper(net, x, y, width, reference=True)
    if exact:
        steppers["exact"] = lilnetx_stepper(net, x, y, width, rate_table=0)
    if no_rate:
        steppers["norate"] = lilnetx_stepper(net, x, y, width, rate=False)
    warm: dict[str, list[float]] = {k: [] for k in steppers}
    for key, step in steppers.items():
        timed_block(step, warmup, warm[key])
    if block is None:  # steps per block: about block_seconds of the slowest trainer
        slowest = max(statistics.median(v[len(v) // 2:]) for v in warm.values())
        block = int(min(100, max(1, round(block_seconds / slowest))))
    times: dict[str, list[float]] = {k: [] for k in steppers}
    order = list(steppers)
    for r in range(rounds):
        for key in (order if r % 2 == 0 else order[::-1]):
            timed_block(steppers[key], block, times[key])
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    out = {
        "case": name, "model": model, "input": [channels, size, size], "width": width,
        "batch": batch, "block": block, "steps_each": len(times["plain"]),
        "plain_ms": ms["plain"], "lilnetx_ms": ms["lilnetx"],
        "ratio": ms["lilnetx"] / ms["plain"],
    }
    for key in EXTRAS:
        if key in ms:
            out[f"{key}_ms"] = ms[key]
            out[f"{key}_ratio"] = ms[key] / ms["plain"]
    return out


def machine() -> dict:
    return {"cpu": cpu_model(), "torch": torch.__version__,
            "python": platform.python_version(), "logical_cpus": os.cpu_count(),
            "loadavg_start": list(os.getloadavg())}


def profile_case(model_name: str, channels: int, size: int, width: float, *, batch: int,
                 rounds: int, seed: int) -> dict:
    """Median ms of the parts of one LilNetX step, each timed alone (forward and backward):
    the rate (tabulated and exact), the slice and L2 penalties, the weight decoding (rounding,
    decoders), the network's forward and backward with its weights decoded, the two Adam
    steps; interleaved over ``rounds``."""
    torch.manual_seed(seed)
    net = create_model(model_name, in_channels=channels, image_size=size, num_classes=10,
                       width=width)
    model = convert(net, width=width)
    model.train()
    cfg = TrainConfig(lr=1e-3)
    opts = make_optimizers(model, cfg)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))

    def rate(table):
        def go():
            model.rate_bits(noisy=True, table=table).backward()
        return go

    def penalties():
        (model.slice_penalty() * cfg.lambda_sparsity + model.l2_penalty() * cfg.lambda_l2
         ).backward()

    def decoding():
        torch.stack([w.sum() for w in model.decode_weights().values()]).sum().backward()

    def network():
        F.cross_entropy(model(x), y).backward()

    def adam():
        for o in opts:
            o.step()

    parts = {"rate, tabulated": rate(cfg.rate_table), "rate, exact": rate(None),
             "slice + L2 penalties": penalties, "decoding (round, decoders)": decoding,
             "network forward + backward": network, "two Adam steps": adam}
    network()  # gradients exist for Adam
    times: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(rounds + 1):
        for key in (list(parts) if r % 2 == 0 else list(parts)[::-1]):
            t0 = time.perf_counter()
            parts[key]()
            if r:  # round 0 warms up
                times[key].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def markdown_section(results: list[dict], info: dict, command: str, settings: dict,
                     profiles: list[dict] | None = None) -> str:
    extras = [k for k in EXTRAS if any(f"{k}_ms" in r for r in results)]
    load = ", ".join(f"{a:.1f}" for a in info["loadavg_start"])
    load_end = ", ".join(f"{a:.1f}" for a in info.get("loadavg_end", []))
    targets = ", ".join(f"{k} <= {v:.2f}x" for k, v in TARGETS.items())
    lines = [
        "## Training-step overhead (LilNetX vs plain PyTorch)",
        "",
        f"Machine: {info['cpu']} ({info['logical_cpus']} logical CPUs), torch {info['torch']}, "
        f"Python {info['python']}; intra-op threads fixed with `torch.set_num_threads` (per "
        f"table). Load average (1, 5, 15 min) at the start: {load}; at the end: {load_end}.",
        "",
        "Per-step wall time on the CPU for one fixed random batch of "
        f"{settings['batch']}: median over {settings['rounds']} interleaved rounds of a block of "
        f"steps per trainer (block size in the table, set so a block lasts about "
        f"{settings['block_seconds']:g} s), after {settings['warmup']} warm-up steps each. Plain: "
        "the unconverted network, cross-entropy, one Adam (fused where PyTorch has it, like LilNetX's). LilNetX: the converted network, the "
        "joint loss (CE + rate + L2 + slice penalties, reference lambdas), both Adam optimizers "
        "(`lilnetx.train.joint_loss`, `make_optimizers`), the rate tabulated "
        "(`rate_table` 8,192, the default). "
        + ("Both in one process where glibc keeps freed memory for the next step, as "
           "`lilnetx.train.fit` sets it (`lilnetx.allocator`). " if settings.get("allocator")
           == "keep" else "Both under glibc's default allocator settings (`--allocator "
           "default`: large freed tensors are unmapped and faulted in again each step). ")
        + f"Targets (issue 15): {targets}.",
    ]
    for key in extras:
        lines += ["", EXTRAS[key][1]]
    lines += ["", "Reproduce:", "", "```", command, "```"]
    for threads in dict.fromkeys(r["threads"] for r in results):
        lines += ["", f"{threads} thread{'s' if threads > 1 else ''}:", ""]
        head = "| case | block | plain ms/step | LilNetX ms/step | ratio | target |"
        rule = "|---|---:|---:|---:|---:|---|"
        for key in extras:
            head += f" {EXTRAS[key][0]} ms/step | {EXTRAS[key][0]} ratio |"
            rule += "---:|---:|"
        lines += [head, rule]
        for r in (r for r in results if r["threads"] == threads):
            target = TARGETS.get(r["case"])
            verdict = "-" if target is None else (
                f"<= {target:.2f}: {'met' if r['ratio'] <= target else '**missed**'}")
            row = (f"| {r['case']} (batch {r['batch']}, {r['input'][0]}x{r['input'][1]}x"
                   f"{r['input'][2]}) | {r['block']} | {r['plain_ms']:.1f} | "
                   f"{r['lilnetx_ms']:.1f} | {r['ratio']:.3f} | {verdict} |")
            for key in extras:
                row += f" {r[f'{key}_ms']:.1f} | {r[f'{key}_ratio']:.3f} |"
            lines.append(row)
    if profiles:
        keys = list(profiles[0]["parts"])
        lines += ["", "Profile: the parts of one LilNetX step, each timed alone (forward and "
                  "backward; median ms over interleaved rounds, batch "
                  f"{settings['batch']}). The network row includes decoding its weights; the "
                  "tabulated and exact rates are alternatives.", "",
                  "| case | threads | " + " | ".join(keys) + " |",
                  "|---|---:|" + "---:|" * len(keys)]
        for pr in profiles:
            lines.append(f"| {pr['case']} | {pr['threads']} | "
                         + " | ".join(f"{pr['parts'][k]:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch.set_num_threads; several values run the cases once per value")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps of each trainer")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    ap.add_argument("--block", type=int, default=None,
                    help="steps per block (default: set from the warm-up, see --block-seconds)")
    ap.add_argument("--block-seconds", type=float, default=None,
                    help="target wall time of one block of steps")
    ap.add_argument("--cases", nargs="+", choices=[c[0] for c in CASES],
                    default=[c[0] for c in CASES])
    ap.add_argument("--reference", action="store_true",
                    help="also time LilNetX through the autograd reference formulas")
    ap.add_argument("--exact", action="store_true",
                    help="also time LilNetX with the exact rate (rate_table 0)")
    ap.add_argument("--no-rate", action="store_true",
                    help="also time LilNetX without the rate term (what the rest costs)")
    ap.add_argument("--profile", action="store_true",
                    help="also time the parts of a LilNetX step, each alone")
    ap.add_argument("--allocator", choices=("keep", "default"), default="keep",
                    help="keep: glibc keeps freed memory for the next step, as lilnetx.train.fit "
                         "sets it (lilnetx.allocator); default: glibc's own settings")
    ap.add_argument("--quick", action="store_true", help="few short rounds: a fast, rougher run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown file whose train_step section to (re)write")
    args = ap.parse_args(argv)
    if args.allocator == "keep":
        keep_freed_memory()
    defaults = ({"warmup": 3, "rounds": 4, "block_seconds": 0.5} if args.quick
                else {"warmup": 5, "rounds": 8, "block_seconds": 2.0})
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v
                for k, v in defaults.items()}
    settings["batch"] = args.batch
    settings["allocator"] = args.allocator
    info = machine()
    results = []
    profiles: list[dict] = []
    for threads, (name, model, channels, size, width) in (
            (t, c) for t in args.threads for c in CASES):
        if name not in args.cases:
            continue
        torch.set_num_threads(threads)
        res = run_case(name, model, channels, size, width, batch=args.batch,
                       warmup=settings["warmup"], rounds=settings["rounds"], block=args.block,
                       block_seconds=settings["block_seconds"], seed=args.seed,
                       reference=args.reference, exact=args.exact, no_rate=args.no_rate)
        res["threads"] = threads
        results.append(res)
        if args.profile:
            parts = profile_case(model, channels, size, width, batch=args.batch,
                                 rounds=settings["rounds"] * 2, seed=args.seed)
            profiles.append({"case": name, "threads": threads, "parts": parts})
            if not args.json:
                print("   profile: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()),
                      flush=True)
        if not args.json:
            line = (f"{threads} thr {name:12s} block {res['block']:3d}  "
                    f"plain {res['plain_ms']:9.2f} ms  "
                    f"lilnetx {res['lilnetx_ms']:9.2f} ms  ratio {res['ratio']:.3f}")
            for key in EXTRAS:
                if f"{key}_ms" in res:
                    line += (f"  {EXTRAS[key][0]} {res[f'{key}_ms']:9.2f} ms  "
                             f"ratio {res[f'{key}_ratio']:.3f}")
            print(line, flush=True)
    info["loadavg_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps({"machine": info, "settings": settings, "results": results,
                          "profiles": profiles}, indent=2))
    if args.out is not None:
        command = "python benchmarks/train_step.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        write_section(args.out, SECTION, markdown_section(results, info, command.strip(),
                                                          settings, profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
