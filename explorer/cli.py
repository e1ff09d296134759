"""The ``lilnetx`` command line. Heavy packages are imported inside the commands.

Exit codes: 0 success, 2 bad input (one ``error:`` line on stderr), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error:` line, exit 2, no usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _nonneg_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, but got {text!r}") from None
        if not (v >= 0) or math.isinf(v):
            raise argparse.ArgumentTypeError(
                f"{name} must be a non-negative finite number, but got {text}")
        return v

    return parse


def _pos_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, but got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, but got {text}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lilnetx", description="The tradeoff explorer for neural-network compression.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    t = sub.add_parser("train", help="train one configuration")
    t.add_argument("--model", default="lenet5", help="mlp, lenet5, resnet20/32/56, vgg16, tv:NAME")
    t.add_argument("--dataset", default="fashion_mnist",
                   help="digits, fashion_mnist, mnist, cifar10, cifar100, imagefolder:PATH")
    t.add_argument("--method", default="lilnetx")
    t.add_argument("--width", type=_nonneg_float("--width"), default=1.0)
    t.add_argument("--epochs", type=_pos_int("--epochs"), default=5)
    t.add_argument("--batch-size", type=_pos_int("--batch-size"), default=256)
    t.add_argument("--lr", type=_nonneg_float("--lr"), default=1e-2)
    t.add_argument("--prior-lr", type=_nonneg_float("--prior-lr"), default=1e-4)
    t.add_argument("--lambda-rate", type=_nonneg_float("--lambda-rate"), default=1e-4)
    t.add_argument("--lambda-sparsity", type=_nonneg_float("--lambda-sparsity"), default=1e-6)
    t.add_argument("--lambda-l2", type=_nonneg_float("--lambda-l2"), default=1e-6)
    t.add_argument("--warmup-epochs", type=_nonneg_float("--warmup-epochs"), default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=_pos_int("--limit"), default=None,
                   help="use at most this many training examples")
    t.add_argument("--data-root", default=None)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    t.add_argument("--out", default=None, help="write the compressed model to this .lnx file")
    t.add_argument("--onnx", default=None, help="also write the slim network as ONNX (needs --out)")
    t.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    t.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("inspect", help="size breakdown and per-layer statistics of a .lnx file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    e = sub.add_parser("evaluate", help="decode a .lnx file and measure test accuracy")
    e.add_argument("file")
    e.add_argument("--dataset", required=True)
    e.add_argument("--data-root", default=None)
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("slim", help="slim a .lnx model: FLOPs, latency, optional ONNX export")
    s.add_argument("file")
    s.add_argument("--onnx", default=None, help="write the slim network to this .onnx file")
    s.add_argument("--no-latency", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_slim)
    return p


def _progress(enabled: bool):
    """A rich progress bar on stderr; a no-op callback when disabled."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False)
    task = prog.add_task("train", total=None, epoch=1, info="")
    state = {"last": ""}

    def cb(ev: dict) -> None:
        if ev["event"] == "step":
            if ev["step"] == 1:
                prog.reset(task, total=ev["steps"], epoch=ev["epoch"], info="")
            bits = f" bits {ev['bits']:.0f}" if ev.get("bits") is not None else ""
            prog.update(task, completed=ev["step"], info=f"loss {ev['loss']:.3f}{bits}{state['last']}")
        else:
            state["last"] = f" | val acc {ev['val_accuracy']:.3f}"
            prog.console.print(
                f"epoch {ev['epoch']}: train acc {ev['train_accuracy']:.3f}, "
                f"val acc {ev['val_accuracy']:.3f}"
                + (f", bits {ev['bits_estimate']:.0f}" if "bits_estimate" in ev else ""))

    return prog, cb


def cmd_train(args: argparse.Namespace) -> dict:
    import lilnetx
    from lilnetx.experiment import RunSpec

    cfg = lilnetx.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, prior_lr=args.prior_lr,
        lambda_rate=args.lambda_rate, lambda_sparsity=args.lambda_sparsity,
        lambda_l2=args.lambda_l2, warmup_epochs=args.warmup_epochs, seed=args.seed,
        device=args.device)
    spec = RunSpec(model=args.model, dataset=args.dataset, method=args.method, width=args.width,
                   data_root=args.data_root, limit=args.limit, train=cfg).validate()
    prog, cb = _progress(not args.json)
    if prog is not None:
        with prog:
            outcome = lilnetx.run(spec, cb)
    else:
        outcome = lilnetx.run(spec)
    summary = dict(outcome.summary)
    summary.update({"model": args.model, "dataset": args.dataset, "method": args.method})
    if args.onnx and not args.out:
        raise UsageError("--onnx needs --out FILE.lnx")
    if args.out:
        from lilnetx.experiment import finalize

        summary.update(finalize(outcome, args.out, latency=not args.no_latency,
                                onnx_path=args.onnx))
    return summary


def cmd_inspect(args: argparse.Namespace) -> dict | None:
    from lilnetx.report import inspect

    report = inspect(args.file)
    if args.json:
        return report
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"{args.file}: {report['size_bytes']:,} bytes")
    t.add_column("part")
    t.add_column("bytes", justify="right")
    t.add_column("share", justify="right")
    for k, v in report["breakdown"].items():
        t.add_row(k, f"{v:,}", f"{v / report['size_bytes']:.1%}")
    con.print(t)
    lt = Table(title="layers")
    for col in ("layer", "group", "shape", "bits", "weight sparsity", "slice sparsity", "out kept"):
        lt.add_column(col, justify="left" if col in ("layer", "group", "shape") else "right")
    for r in report["layers"]:
        lt.add_row(r["name"], r["group"], "x".join(map(str, r["shape"])), f"{r['bits']:.0f}",
                   f"{r['weight_sparsity']:.3f}", f"{r['slice_sparsity']:.3f}",
                   f"{r['out_channels_kept']}/{r['shape'][0]}")
    con.print(lt)
    eff = report["coding_efficiency"]
    con.print(f"latent information {report['latent_information_bits'] / 8:,.0f} bytes; "
              f"coding efficiency {eff:.4f}" if eff else "latents carry no information")
    return None


def cmd_evaluate(args: argparse.Namespace) -> dict:
    import lilnetx
    from lilnetx import fileformat

    c = fileformat.read(args.file)
    net = fileformat.build_network(c)
    splits = lilnetx.create_dataset(args.dataset, args.data_root)
    info = splits.info
    arch = c.arch
    if (info.channels, info.height, info.num_classes) != (
            arch.get("in_channels"), arch.get("image_size"), arch.get("num_classes")):
        raise lilnetx.ConfigError(
            f"dataset {args.dataset!r} ({info.channels}x{info.height}x{info.width}, "
            f"{info.num_classes} classes) does not fit the model (inputs "
            f"{arch.get('in_channels')}x{arch.get('image_size')}, {arch.get('num_classes')} classes)")
    device = lilnetx.pick_device(args.device)
    acc = lilnetx.evaluate_accuracy(net.to(device), splits.test, device=device)
    return {"accuracy": acc, "dataset": args.dataset, "file": args.file,
            "size_bytes": c.size_bytes, "test_examples": len(splits.test)}


def cmd_slim(args: argparse.Namespace) -> dict:
    from lilnetx import fileformat
    from lilnetx.export import slim_metrics

    c = fileformat.read(args.file)
    net = fileformat.build_network(c)
    _, metrics = slim_metrics(net, c.arch, latency=not args.no_latency, onnx_path=args.onnx)
    if args.onnx:
        metrics["onnx_path"] = args.onnx
    return metrics


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="summary", show_header=False)
    for k, v in summary.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        result = args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # LilNetXError and friends are bad input; anything else is a bug
        from lilnetx.errors import LilNetXError

        if isinstance(e, LilNetXError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    if result is not None:
        if getattr(args, "json", False):
            sys.stdout.flush()
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            _print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
