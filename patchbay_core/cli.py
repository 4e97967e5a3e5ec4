"""The `patchbay` command."""

from __future__ import annotations

import argparse
import os
import sys

import anyio

from .errors import PatchbayError
from .userns import has_net_admin, init_userns


def _enter_userns_if_needed() -> None:
    # Before anything starts a thread: without root, labs need a user namespace.
    if os.geteuid() != 0 and not has_net_admin():
        init_userns()


def cmd_doctor(_: argparse.Namespace) -> int:
    from .doctor import run_checks

    try:
        _enter_userns_if_needed()
    except PatchbayError as exc:
        print(f"FAIL  user namespace  {exc}")
    report = run_checks()
    print(report.render())
    return 0 if report.labs_can_run else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _enter_userns_if_needed()
    return anyio.run(run_demo, args.outdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchbay", description="Realistic networks from Linux namespaces.")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="check the kernel features a lab needs")
    doctor.set_defaults(func=cmd_doctor)
    demo = sub.add_parser("demo", help="build a small lab, exchange UDP and TCP, print a report")
    demo.add_argument("--outdir", help="write events and state of the demo lab here")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PatchbayError as exc:
        print(f"patchbay: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
