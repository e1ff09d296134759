"""``lilnetx dashboard`` and ``lilnetx report``: registered into the explorer's command line
through the ``lilnetx.commands`` entry point. Dash, plotly and matplotlib are imported only when
a command runs."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    d = sub.add_parser("dashboard", help="serve the Pareto explorer (Dash)")
    d.add_argument("--tracking-uri", default=None)
    d.add_argument("--experiment", default=None)
    d.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    d.add_argument("--port", type=int, default=8050)
    d.set_defaults(func=cmd_dashboard)

    r = sub.add_parser("report", help="a self-contained HTML report of a sweep (and a PNG)")
    r.add_argument("--experiment", default=None, help="default: the newest sweep's experiment")
    r.add_argument("--sweep", default=None, help="a sweep id (default: the newest)")
    r.add_argument("--tracking-uri", default=None)
    r.add_argument("--out", required=True, help="the HTML file (the PNG goes beside it)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_report)


def cmd_dashboard(args: argparse.Namespace) -> None:
    from explorer import tracking
    from explorer.cli import require_extra
    from lilnetx.errors import ConfigError

    require_extra("dashboard", "dashboard")

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, but got {args.port}")
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    from .app import serve

    print(f"LilNetX explorer: http://{args.host}:{args.port}/ (tracking {uri})",
          file=sys.stderr, flush=True)
    serve(uri, args.experiment, args.host, args.port)


def cmd_report(args: argparse.Namespace) -> dict | None:
    import importlib.util

    from explorer import tracking
    from explorer.cli import UsageError, require_extra

    require_extra("dashboard", "report")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("`lilnetx report` needs matplotlib for its PNG: pip install matplotlib")
    from .report import build_report, check_out

    check_out(args.out)  # before any store is opened
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    out = build_report(uri, args.experiment, args.sweep, args.out)
    if args.json:
        return out
    print(f"wrote {out['html']} and {out['png']}")
    return None
