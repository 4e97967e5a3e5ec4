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


def cmd_lab(args: argparse.Namespace) -> int:
    # No user namespace here: the daemon `lab up` starts enters its own when it needs one.
    from . import livelab

    if args.lab_command == "up":
        return livelab.up(args.topology, args.name, args.outdir)
    if args.lab_command == "exec":
        return livelab.exec_in(args.name, args.node, args.argv, use_tty=args.tty)
    if args.lab_command == "shell":
        return livelab.shell(args.name, args.node)
    if args.lab_command == "down":
        return livelab.down(args.name)
    return livelab.ls()


def _add_lab_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = sub.add_parser("lab", help="a live lab to poke at: up, exec, shell, down, ls",
                         description="Build a lab from a topology file and keep it up in the background, "
                                     "run commands in its nodes, take it down. See docs/topology.md.")
    lab.set_defaults(func=cmd_lab)
    cmds = lab.add_subparsers(dest="lab_command", required=True)
    name_help = "the lab's name (default: the only lab up; for `up`, the topology file's name)"
    up = cmds.add_parser("up", help="build the lab of TOPO.toml and hold it in a background daemon")
    up.add_argument("topology", metavar="TOPO.toml")
    up.add_argument("--name", help=name_help)
    up.add_argument("--outdir", help="write the lab's events, state and logs here")
    run = cmds.add_parser("exec", help="run a command inside a node: lab exec NODE -- CMD...")
    run.add_argument("--name", help=name_help)
    run.add_argument("-t", "--tty", action="store_true", help="give the command a pseudo-terminal")
    run.add_argument("node", metavar="NODE")
    run.add_argument("argv", metavar="CMD", nargs=argparse.REMAINDER)
    shell = cmds.add_parser("shell", help="an interactive shell ($SHELL, else /bin/sh) inside a node")
    shell.add_argument("--name", help=name_help)
    shell.add_argument("node", metavar="NODE")
    down = cmds.add_parser("down", help="take the lab down: nothing of it stays")
    down.add_argument("--name", help=name_help)
    cmds.add_parser("ls", help="list the labs that are up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchbay", description="Realistic networks from Linux namespaces.")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="check the kernel features a lab needs")
    doctor.set_defaults(func=cmd_doctor)
    demo = sub.add_parser("demo", help="build a small lab, exchange UDP and TCP, print a report")
    demo.add_argument("--outdir", help="write events and state of the demo lab here")
    demo.set_defaults(func=cmd_demo)
    _add_lab_parser(sub)
    from .sim.cli import add_parsers as add_sim_parsers

    add_sim_parsers(sub)
    from .fmtlog import add_parser as add_fmtlog_parser

    add_fmtlog_parser(sub)
    from .devtools.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
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
