"""``lilnetx dashboard``: registered into the explorer's command line through the
``lilnetx.commands`` entry point. Dash is imported only when the command runs."""

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
