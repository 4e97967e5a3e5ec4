"""`patchbay serve [DIR] [--testdir] [--open] [--bind HOST:PORT]` (the parser stays light: the
web server is imported only when the command runs)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import webbrowser
from pathlib import Path

DEFAULT_BIND = "127.0.0.1:7117"


def default_root() -> Path:
    """$PATCHBAY_OUTDIR, else .patchbay-work when it exists, else the working directory."""
    env = os.environ.get("PATCHBAY_OUTDIR")
    if env:
        return Path(env)
    work = Path(".patchbay-work")
    return work if work.is_dir() else Path(".")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "serve", help="the devtools UI (topology, events, logs, timeline, results) over run directories",
        description="Serve the devtools UI over every lab and sim run below DIR (default: $PATCHBAY_OUTDIR, "
                    "else .patchbay-work if it exists, else the working directory). See docs/devtools.md.")
    parser.add_argument("dir", metavar="DIR", nargs="?", help="the directory holding runs")
    parser.add_argument("--testdir", action="store_true",
                        help="serve the pytest plugin's per-test output ($PATCHBAY_OUTDIR, else patchbay/ in "
                             "pytest's newest temp dir)")
    parser.add_argument("--open", action="store_true", help="open the UI in a web browser")
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                        help=f"where to listen (default {DEFAULT_BIND}; port 0 picks a free one)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..pytest_plugin import default_testdir
    from .server import make_app, parse_bind, run_app

    if args.testdir and args.dir:
        print("patchbay serve: give DIR or --testdir, not both", file=sys.stderr)
        return 2
    root = default_testdir() if args.testdir else (Path(args.dir) if args.dir else default_root())
    if not root.is_dir():
        hint = " (run the tests first: the pytest plugin writes there)" if args.testdir else ""
        print(f"patchbay serve: {root} is not a directory{hint}", file=sys.stderr)
        return 2
    try:
        host, port = parse_bind(args.bind)
    except ValueError as exc:
        print(f"patchbay serve: {exc}", file=sys.stderr)
        return 2
    app = make_app(root, config={"root": str(root.resolve())})

    def ready(url: str) -> None:
        print(f"patchbay devtools: {url}  (runs under {root.resolve()}; Ctrl-C stops)", flush=True)
        if args.open:
            webbrowser.open(url)

    try:
        asyncio.run(run_app(app, host, port, on_ready=ready))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"patchbay serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
