"""`patchbay run` and `patchbay compare`: argparse glue over the runner and the comparison."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="run sims (TOML files of the book's Sim TOML Reference)",
                         description="Run sim files, each sim in a lab of its own. Output goes to "
                                     "WORK_DIR/sim-YYMMDD-HHMMSS/ (WORK_DIR/latest points at it). Exit status 0 "
                                     "only when every sim passed. See docs/sim.md.")
    run.add_argument("sims", metavar="SIM.toml", nargs="+", help="sim files, or directories to search for them")
    run.add_argument("--work-dir", default=".patchbay-work", help="where runs are written (default: %(default)s)")
    run.add_argument("--jobs", "-j", type=int, default=1, help="sims to run at once, each in its own lab")
    run.add_argument("--filter", metavar="NAME", help="only sims whose name contains NAME (or matches it, with * ? [])")
    run.set_defaults(func=cmd_run)
    cmp = sub.add_parser("compare", help="compare two runs' throughput and latency; non-zero exit on regression",
                         description="Print throughput and latency of every step of two runs side by side. Exit "
                                     "status 1 when B is worse than A beyond --max-regression.")
    cmp.add_argument("run_a", metavar="RUN_A", help="a run directory, work directory (its latest run) or results file")
    cmp.add_argument("run_b", metavar="RUN_B")
    cmp.add_argument("--max-regression", default="10%", metavar="PCT",
                     help="how much worse B may be than A (default: %(default)s)")
    cmp.set_defaults(func=cmd_compare)


def cmd_run(args: argparse.Namespace) -> int:
    from ..cli import _enter_userns_if_needed
    from .display import make_display
    from .runner import NoSims, RunOptions, run_paths

    if args.jobs < 1:
        print("patchbay run: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    _enter_userns_if_needed()
    opts = RunOptions(work_dir=Path(args.work_dir), jobs=args.jobs, filter=args.filter, handle_signals=True,
                      argv=sys.argv[1:])
    display = make_display()

    async def main() -> int:
        result = await run_paths(args.sims, opts, [display.update])
        display.stop(result.output)
        if result.status == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_OK if result.ok else EXIT_FAILED

    try:
        return anyio.run(main)
    except NoSims as exc:
        print(f"patchbay run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the run's own handler was in place (while loading)
        print("patchbay run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareError, compare, load_run, parse_threshold, regressions, render

    try:
        threshold = parse_threshold(args.max_regression)
        a, b = load_run(args.run_a), load_run(args.run_b)
    except CompareError as exc:
        print(f"patchbay compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = compare(a, b, threshold)
    print(render(a, b, rows, threshold))
    return EXIT_FAILED if regressions(rows) else EXIT_OK
