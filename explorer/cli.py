"""The ``lilnetx`` command line. Heavy packages are imported inside the commands.

Exit codes: 0 success, 2 bad input (one ``error:`` line on stderr), 1 unexpected failure (and a
sweep whose trials all failed), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from lilnetx.core.channel_options import CHOICES
from lilnetx.errors import ConfigError

EXIT_BAD_INPUT = 2


class UsageError(ConfigError):  # also raised by plugin commands
    """Bad command-line usage (exit code 2)."""


class ExitWith(Exception):
    """A command that ends with its own exit code and one ``error:`` line (no traceback)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


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


def _fraction(name: str) -> Callable[[str], float]:
    """A number in [0, 1)."""
    nonneg = _nonneg_float(name)

    def parse(text: str) -> float:
        v = nonneg(text)
        if not v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1), but got {text}")
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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. The method registry (which imports torch) is read only when ``argv`` runs
    ``train``, so ``lilnetx --help`` and other commands' bad-input errors stay fast."""
    argv = sys.argv[1:] if argv is None else argv
    p = _Parser(prog="lilnetx", description="The tradeoff explorer for neural-network compression.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    t = sub.add_parser("train", help="train one configuration")
    t.add_argument("--model", default="lenet5", help="mlp, lenet5, resnet20/32/56, vgg16, tv:NAME")
    t.add_argument("--dataset", default="fashion_mnist",
                   help="digits, fashion_mnist, mnist, cifar10, cifar100, imagefolder:PATH")
    t.add_argument("--method", default="lilnetx", help="see `lilnetx methods` (default lilnetx)")
    if argv[:1] == ["train"]:
        _method_flags(t)
    t.add_argument("--init-from", default=None,
                   help="start from trained weights: a state dict (.pt/.pth, .safetensors) or "
                        "a .lnx file (every method; LilNetX converts them to latents)")
    t.add_argument("--width", type=_nonneg_float("--width"), default=1.0)
    t.add_argument("--epochs", type=_pos_int("--epochs"), default=5)
    t.add_argument("--batch-size", type=_pos_int("--batch-size"), default=256)
    t.add_argument("--lr", type=_nonneg_float("--lr"), default=None,
                   help="default: the method's own (see `lilnetx methods`)")
    t.add_argument("--prior-lr", type=_nonneg_float("--prior-lr"), default=1e-4)
    t.add_argument("--lambda-rate", type=_nonneg_float("--lambda-rate"), default=1e-4)
    t.add_argument("--lambda-sparsity", type=_nonneg_float("--lambda-sparsity"), default=1e-6)
    t.add_argument("--lambda-l2", type=_nonneg_float("--lambda-l2"), default=1e-6)
    t.add_argument("--lambda-channel", type=_nonneg_float("--lambda-channel"), default=0.0,
                   help="weight of the coupled-channel group prior (LilNetX models; 0: off)")
    t.add_argument("--channel-scope", choices=CHOICES["channel_scope"], default="coupled",
                   help="channels the prior acts on: those several layers write (residual "
                   "streams), or every channel")
    t.add_argument("--channel-finetune", type=_fraction("--channel-finetune"), default=0.0,
                   help="fraction of the steps, at the end, that fine-tune without the "
                   "channel prior, the channels it removed held at zero (default 0)")
    for key, default, what in (
            ("channel_solver", "gradient", "how the channel prior acts: a loss term through "
             "Adam, or a proximal shrink of lr * lambda_channel per step after it"),
            ("channel_rewind", "none", "what the fine-tuning phase starts from: as it is, the "
             "learning rate restarted, or the weights at step 0 too"),
            ("channel_cost", "params", "what a channel costs the prior: its weights, or its "
             "multiply-accumulates (MorphNet-style; first-stage channels pulled hardest)"),
            ("channel_round", "up", "how --channel-round-to rounds a group's width: up, or to "
             "the nearest multiple (channels taken away too; groups under N left alone)")):
        t.add_argument("--" + key.replace("_", "-"), choices=CHOICES[key], default=default,
                       help=f"{what} (default {default})")
    t.add_argument("--channel-block", type=int, default=1,
                   help="channels the channel prior removes together, B at a time, so slim "
                   "widths stay multiples of B (default 1)")
    t.add_argument("--channel-round-to", type=int, default=0,
                   help="at the switch to fine-tuning, give back removed channels until every "
                   "group that lost some keeps a multiple of N (default 0: off)")
    t.add_argument("--warmup-epochs", type=_nonneg_float("--warmup-epochs"), default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--rate-table", type=int, default=None,
                   help="grid points per channel of the tabulated training rate (default "
                   "8192); 0: exact")
    t.add_argument("--limit", type=_pos_int("--limit"), default=None,
                   help="use at most this many training examples")
    t.add_argument("--data-root", default=None)
    _data_flags(t)
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
    _data_flags(e)
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser("sweep", help="run a multi-objective sweep from a YAML search space")
    w.add_argument("space")
    w.add_argument("--tracking-uri", default=None)
    w.add_argument("--experiment", default=None)
    w.add_argument("--num-samples", type=_pos_int("--num-samples"), default=None)
    w.add_argument("--max-concurrent", type=_pos_int("--max-concurrent"), default=None)
    w.add_argument("--address", default=None, help="HOST:PORT of an existing Ray cluster")
    w.add_argument("--study-storage", default=None,
                   help="Optuna storage: an RDB URL or a journal file (default: beside mlflow.db)")
    w.add_argument("--device", default=None)
    w.add_argument("--resume", action="store_true", help="continue the newest sweep of this space")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_sweep)

    f = sub.add_parser("pareto", help="the non-dominated runs of the newest sweep")
    f.add_argument("--experiment", default=None, help="default: the only or newest experiment")
    f.add_argument("--tracking-uri", default=None)
    f.add_argument("--sweep", default=None, help="a sweep id (default: the newest)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_pareto)

    x = sub.add_parser("export", help="register a run's model in the MLflow model registry")
    x.add_argument("run_id")
    x.add_argument("--name", required=True)
    x.add_argument("--alias", default="champion")
    x.add_argument("--tracking-uri", default=None)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("slim", help="slim a .lnx model: FLOPs, latency, optional ONNX export")
    s.add_argument("file")
    s.add_argument("--onnx", default=None, help="write the slim network to this .onnx file "
                   "(and, unless --no-latency, time it under ONNX Runtime)")
    s.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="round every slimmed channel count up to a multiple of N")
    s.add_argument("--keep-narrow", action="store_true",
                   help="with --round-to N, leave channel counts under N as they are")
    s.add_argument("--no-latency", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_slim)
    for what in ("models", "datasets", "methods"):
        r = sub.add_parser(what, help=f"list the installed {what} (plugins included) and the "
                           "parameters each takes")
        r.add_argument("--json", action="store_true")
        r.set_defaults(func=cmd_registry, registry=what)
    _plugin_commands(sub)
    return p


EXTRAS = {"sweep": ("ray", "optuna", "optuna_integration", "mlflow", "yaml", "jsonschema"),
          "dashboard": ("dash", "plotly", "pandas", "mlflow", "optuna")}
"""The packages of each ``pyproject.toml`` extra that commands need."""


def require_extra(extra: str, command: str) -> None:
    """:class:`UsageError` (exit 2) naming the extra to install when one of its packages is
    missing: the core install trains and decodes models without Ray, MLflow or Dash."""
    import importlib.util

    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"`lilnetx {command}` needs the [{extra}] extra (missing: "
                         f"{', '.join(missing)}); install it with: pip install "
                         f"'lilnetx-explorer[{extra}]'")


def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=_pos_int("--image-size"), default=None,
                        help="imagefolder: side of the (square) crops, default 32")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader processes for data read from disk (default min(4, CPUs))")


def _data_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in (("image_size", args.image_size), ("workers", args.workers))
            if v is not None}


def _method_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per method parameter of the method registry (``--bits``, ``--schedule``...),
    unset by default so the method's own default applies."""
    from lilnetx.methods import METHODS, all_params

    owners: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        for p in cls.params:
            owners.setdefault(p.name, []).append(name)
    for name, p in all_params().items():
        kind = str if p.kind is str else _param_type(p)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", type=kind,
                            default=None, help=f"{'/'.join(owners[name])}: {p.help} "
                            f"({p.range_text()}, default {p.default})")


def _param_type(p) -> Callable[[str], float]:
    from lilnetx.errors import ConfigError

    def parse(text: str):
        try:
            value = float(text) if p.kind is float else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{p.name.replace('_', '-')} must be "
                                             f"{'an integer' if p.kind is int else 'a number'}, "
                                             f"but got {text[:50]!r}") from None
        try:
            return p.check(value)
        except ConfigError as e:  # out of range
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _plugin_commands(sub) -> None:
    """Commands of packages built on this one (the dashboard), found through the
    ``lilnetx.commands`` entry-point group so that explorer never imports them."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="lilnetx.commands"), key=lambda e: e.name):
        ep.load()(sub)


def _progress(enabled: bool):
    """A rich progress bar on stderr; a no-op callback when disabled."""
    if not enabled:
        return None, None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False, auto_refresh=False)
    task = prog.add_task("train", total=None, epoch=1, info="")
    state = {"last": "", "loss": "", "started": False}

    def cb(ev: dict) -> None:
        if not state["started"]:  # nothing on screen before training really starts
            state["started"] = True
            prog.auto_refresh = True
            prog.start()
        if ev["event"] == "step":
            if ev["step"] == 1:
                prog.reset(task, total=ev["steps"], epoch=ev["epoch"], info="")
            if ev.get("loss") is not None:  # read from the device every few steps only
                bits = f" bits {ev['bits']:.0f}" if ev.get("bits") is not None else ""
                state["loss"] = f"loss {ev['loss']:.3f}{bits}"
            prog.update(task, completed=ev["step"], info=f"{state['loss']}{state['last']}")
        else:
            state["last"] = f" | val acc {ev['val_accuracy']:.3f}"
            prog.console.print(
                f"epoch {ev['epoch']}: train acc {ev['train_accuracy']:.3f}, "
                f"val acc {ev['val_accuracy']:.3f}"
                + (f", bits {ev['bits_estimate']:.0f}" if "bits_estimate" in ev else ""))

    return prog, cb, state


def cmd_train(args: argparse.Namespace) -> dict:
    import lilnetx
    from lilnetx.experiment import RunSpec

    cfg = lilnetx.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, prior_lr=args.prior_lr,
        lambda_rate=args.lambda_rate, lambda_sparsity=args.lambda_sparsity,
        lambda_l2=args.lambda_l2, lambda_channel=args.lambda_channel,
        channel_scope=args.channel_scope, channel_finetune=args.channel_finetune,
        channel_solver=args.channel_solver, channel_rewind=args.channel_rewind,
        channel_block=args.channel_block, channel_cost=args.channel_cost,
        channel_round_to=args.channel_round_to, channel_round=args.channel_round,
        warmup_epochs=args.warmup_epochs, seed=args.seed,
        device=args.device,
        **({} if args.rate_table is None else {"rate_table": args.rate_table}))
    if args.onnx and not args.out:
        raise UsageError("--onnx needs --out FILE.lnx")
    options = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    spec = RunSpec(model=args.model, dataset=args.dataset, method=args.method, width=args.width,
                   data_root=args.data_root, limit=args.limit, train=cfg, options=options,
                   init_from=args.init_from, data_options=_data_options(args)).validate()
    prog, cb, state = _progress(not args.json)
    if prog is not None:
        try:
            outcome = lilnetx.run(spec, cb)
        finally:
            if state["started"]:
                prog.stop()
    else:
        outcome = lilnetx.run(spec)
    summary = dict(outcome.summary)
    summary.update({"model": args.model, "dataset": args.dataset, "method": args.method})
    if args.out:
        from lilnetx.experiment import finalize

        summary.update(finalize(outcome, args.out, latency=not args.no_latency,
                                onnx_path=args.onnx))
    return summary


def cmd_inspect(args: argparse.Namespace) -> dict | None:
    from lilnetx.fileformat.report import inspect

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
    splits = lilnetx.create_dataset(args.dataset, args.data_root, **_data_options(args))
    info = splits.info
    arch = c.arch
    if (info.channels, info.height, info.num_classes) != (
            arch.get("in_channels"), arch.get("image_size"), arch.get("num_classes")):
        raise lilnetx.ConfigError(
            f"dataset {args.dataset!r} ({info.channels}x{info.height}x{info.width}, "
            f"{info.num_classes} classes) does not fit the model (inputs "
            f"{arch.get('in_channels')}x{arch.get('image_size')}, {arch.get('num_classes')} classes)")
    device = lilnetx.pick_device(args.device)
    acc = lilnetx.evaluate_accuracy(net.to(device), splits.test, device=device,
                                    workers=splits.workers)
    return {"accuracy": acc, "dataset": args.dataset, "file": args.file,
            "size_bytes": c.size_bytes, "test_examples": len(splits.test)}


def cmd_sweep(args: argparse.Namespace) -> dict | None:
    require_extra("sweep", "sweep")
    from explorer.space import load_space

    space = load_space(args.space)  # validated before anything starts
    from explorer.sweep import SweepFailed, SweepOptions, run_sweep

    try:
        res = run_sweep(space, SweepOptions(
            tracking_uri=args.tracking_uri, experiment=args.experiment,
            num_samples=args.num_samples, max_concurrent=args.max_concurrent,
            address=args.address, resume=args.resume, study_storage=args.study_storage,
            device=args.device, live=not args.json))
    except SweepFailed as e:
        if args.json:
            sys.stdout.flush()
            print(json.dumps({**e.result.as_dict(), "objectives": space.objectives,
                              "errors": e.errors}, indent=2, sort_keys=True))
        raise ExitWith(1, str(e)) from None
    out = res.as_dict()
    out["objectives"] = space.objectives
    if args.json:
        return out
    for m, f in res.fronts.items():
        _print_front(f["front"], space.objectives,
                     f"{res.sweep} [{m}]: front of {len(f['front'])} of {f['finished']} runs, "
                     + _hv_title(f, space.objectives, f.get("log_reference")), res.sweep)
    print(f"{res.finished} finished, {res.failed} failed, {res.seconds:.0f} s", file=sys.stderr)
    return None


def _hv_title(f: dict, objectives: dict, log_reference: dict | None) -> str:
    """``hypervolume 1.4e+04, log10-size_bytes hypervolume 0.123 (ref val_accuracy=0,
    log10 size_bytes=4.41)``: the log part only when an objective is on a log axis."""
    from explorer.pareto import log_objectives

    title = f"hypervolume {f['hypervolume']:.4g}"
    logs = log_objectives(objectives)
    if not logs or "log_hypervolume" not in f:
        return title
    title += f", log10-{'/'.join(logs)} hypervolume {f['log_hypervolume']:.4g}"
    if log_reference:
        title += " (ref " + ", ".join(
            f"{'log10 ' if o in logs else ''}{o}={log_reference[o]:.4g}" for o in objectives) + ")"
    if f.get("log_excluded"):
        title += f", {f['log_excluded']} run(s) with a value <= 0 left out of it"
    return title


#: Short column titles of ``lilnetx pareto``'s table (the registry's label otherwise).
SHORT = {"val_accuracy": "val acc", "accuracy": "test acc", "size_bytes": "size",
         "compression_ratio": "ratio", "slice_sparsity": "sparsity", "latency_ms": "latency",
         "flops": "MACs", "weight_sparsity": "w. sparsity", "channel_sparsity": "ch. removed",
         "bits_estimate": "info"}
#: Hyperparameters shown in the table's last column, with their short names.
SHORT_PARAMS = {"lambda_rate": "rate", "lambda_sparsity": "slice", "lambda_l2": "l2",
                "lambda_channel": "channel", "lr": "lr", "bits": "bits", "sparsity": "prune"}


def run_label(name: str, sweep: str) -> str:
    """A run's name without the sweep id the table's title already shows (``t003``)."""
    if sweep and name.startswith(sweep) and len(name) > len(sweep):
        return name[len(sweep):].lstrip("-_") or name
    return name


def front_table(rows: list[dict], objectives: dict, title: str, sweep: str = ""):
    """The front as a rich table that reads in an 80-column terminal: values in their units
    (88.5%, 5.0 KB, 49x, 0.84 ms), runs by their trial label, hyperparameters short."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from explorer.pareto import search_metric
    from lilnetx.metrics import format_metric, format_param

    t = Table(title=escape(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              expand=False)
    t.add_column("run", no_wrap=True, max_width=14)
    cols = [search_metric(o) for o in objectives]
    for extra in ("accuracy", "size_bytes", "compression_ratio", "slice_sparsity",
                  "latency_ms"):
        if extra not in cols:
            cols.append(extra)
    present = [c for c in cols if any(c in r["metrics"] for r in rows)] or cols
    for col in present:
        t.add_column(SHORT.get(col, col), justify="right", no_wrap=True)
    t.add_column("params", min_width=12, overflow="fold")  # wraps between parameters
    for r in rows:
        m = r["metrics"]
        params = " ".join(f"{SHORT_PARAMS[k]}={format_param(v)}"
                          for k, v in sorted(r["params"].items()) if k in SHORT_PARAMS)
        t.add_row(escape(run_label(r["run_name"] or r["run_id"][:8], sweep)),
                  *[format_metric(c, m.get(c)) for c in present], escape(params))
    return t


def _print_front(rows: list[dict], objectives: dict, title: str, sweep: str = "") -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    console.print(escape(title), soft_wrap=False)  # wraps as text, not cut to the table
    console.print(front_table(rows, objectives, "", sweep))


def cmd_pareto(args: argparse.Namespace) -> dict | None:
    require_extra("sweep", "pareto")
    import json as _json

    from explorer import tracking
    from explorer.sweep import fronts
    from lilnetx.errors import ConfigError

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    c = tracking.client(uri)
    filt = f"tags.`{tracking.TAG_ROLE}` = 'sweep'"
    if args.sweep:
        filt += f" and tags.`{tracking.TAG_SWEEP}` = '{args.sweep}'"
    if args.experiment:
        exp = c.get_experiment_by_name(args.experiment)
        if exp is None:
            raise ConfigError(f"unknown experiment {args.experiment!r}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in c.search_experiments()]
    parents = c.search_runs(ids, filter_string=filt, order_by=["attributes.start_time DESC"],
                            max_results=1) if ids else []
    if not parents:
        raise ConfigError("no sweep found" + (f" in experiment {args.experiment!r}"
                                              if args.experiment else f" at {uri}"))
    p = parents[0]
    objectives = _json.loads(p.data.tags[tracking.TAG_OBJECTIVES])
    res = fronts(uri, p.info.experiment_id, p.data.tags[tracking.TAG_SWEEP], objectives)
    out = {"sweep": p.data.tags[tracking.TAG_SWEEP], "experiment_id": p.info.experiment_id,
           "objectives": objectives, "hypervolume": res["hypervolume"], "front": res["front"],
           "methods": res["methods"], "reference": res["reference"],
           "log_hypervolume": res["log_hypervolume"], "log_reference": res["log_reference"],
           "log_objectives": res["log_objectives"], "log_excluded": res["log_excluded"]}
    if args.json:
        return out
    for m, f in res["methods"].items():
        _print_front(f["front"], objectives, f"{out['sweep']} [{m}]: front of {len(f['front'])} "
                     f"of {f['finished']} runs, " + _hv_title(f, objectives, res["log_reference"]),
                     out["sweep"])
    return None


def cmd_export(args: argparse.Namespace) -> dict:
    require_extra("sweep", "export")
    from explorer.registry import check_alias, check_name, export_run

    check_name(args.name)
    check_alias(args.alias)
    return export_run(args.run_id, args.name, args.alias, args.tracking_uri)


def cmd_slim(args: argparse.Namespace) -> dict:
    from lilnetx import fileformat
    from lilnetx.deploy.export import slim_metrics

    c = fileformat.read(args.file)
    net = fileformat.build_network(c)
    _, metrics = slim_metrics(net, c.arch, latency=not args.no_latency, onnx_path=args.onnx,
                              round_to=args.round_to, round_narrow=not args.keep_narrow)
    if args.onnx:
        metrics["onnx_path"] = args.onnx
    return metrics


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def registry_listing(what: str) -> list[dict]:
    """What ``lilnetx models|datasets|methods`` lists: one entry per registered name."""
    if what == "methods":
        from lilnetx.methods import METHODS

        return [{"name": n, "summary": cls.summary, "default_lr": cls.default_lr,
                 "accepts_init": cls.accepts_init, "source": cls.__module__,
                 "params": [{"name": p.name, "type": p.kind.__name__, "default": p.default,
                             "range": p.range_text(), "help": p.help} for p in cls.params]}
                for n, cls in METHODS.items()]
    if what == "models":
        from lilnetx.models import MODELS

        rows = [{"name": n, "summary": _first_line(fn), "source": fn.__module__,
                 "params": [{"name": "width", "type": "float", "default": 1.0,
                             "help": "channel width multiplier"}]}
                for n, fn in MODELS.items()]
        rows.append({"name": "tv:NAME", "summary": "any torchvision classifier "
                     "(torchvision.models.list_models())", "source": "torchvision",
                     "params": []})
        return rows
    from lilnetx.data import DATASETS, dataset_names

    shown = dict(zip(DATASETS.names(), dataset_names(), strict=True))
    return [{"name": shown[n], "summary": _first_line(fn), "source": fn.__module__,
             "params": [{"name": "data_root", "type": "str", "default": None,
                         "help": "folder of the files"}] if ":" not in shown[n] else []}
            for n, fn in DATASETS.items()]


def cmd_registry(args: argparse.Namespace) -> dict | None:
    rows = registry_listing(args.registry)
    if args.json:
        return {args.registry: rows}
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"installed {args.registry}")
    for col in ("name", "parameters", "what it is"):
        t.add_column(col)
    for r in rows:
        params = ", ".join(f"{p['name']}={p['default']}" + (f" {p['range']}" if p.get("range")
                                                           else "") for p in r["params"])
        t.add_row(r["name"], params or "-", r["summary"])
    Console().print(t)
    return None


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="summary", show_header=False)
    for k, v in summary.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
        result = args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ExitWith as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
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
