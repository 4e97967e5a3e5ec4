"""Build and tear down a lab of N routers with one device each, five ways, side by side.

    .venv/bin/python benchmarks/bench_build.py [--sizes 10 50 200] [--repeat 5]

(a) patchbay_core; (b) the same topology from `ip` subprocesses; (c) pyroute2 in setns-ed
threads; (d) a minimal C program over libmnl doing the same netlink work (the floor);
(e) Mininet's Python API building a star of N hosts, next to patchbay's star (one router, N
devices); and with every router a HOME NAT: (a-nat) patchbay_core, (b-nat) `ip` plus one
`nft -f` per router with the same ruleset. Teardown is timed until the kernel has removed
the namespaces. Each variant runs in its own process, variants interleaved, median of
--repeat runs, each started on an idle machine (see `settle`). Prints a table and the ratios
the project aims for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
SYSTEM_PYTHON = "/usr/bin/python3"

VARIANTS = {
    "a": ("patchbay_core", [PYTHON, "-m", "variants.patchbay_lab"]),
    "b": ("ip subprocesses", [PYTHON, "-m", "variants.ip_subprocess"]),
    "c": ("pyroute2 threads", [PYTHON, "-m", "variants.pyroute2_threads"]),
    "d": ("C floor (libmnl)", [str(HERE / "floor")]),
    "a*": ("patchbay_core star", [PYTHON, "-m", "variants.patchbay_lab", "--star"]),
    "e": ("Mininet star", ["unshare", "--net", SYSTEM_PYTHON, "-m", "variants.mininet_star"]),
    "a-nat": ("patchbay_core HOME NAT", [PYTHON, "-m", "variants.patchbay_lab", "--nat"]),
    "b-nat": ("ip + nft -f HOME NAT", [PYTHON, "-m", "variants.ip_subprocess", "--nat"]),
}


def build_floor() -> None:
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(HERE / "floor"), str(HERE / "floor.c"), "-lmnl"], check=True)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def settle(window: float = 0.05, idle: float = 0.9, timeout: float = 5.0) -> None:
    """Wait until the machine is idle: the kernel destroys a finished run's namespaces on its
    own time (cleanup_net), which would otherwise slow whichever variant runs next."""
    deadline = time.monotonic() + timeout
    before = _cpu_times()
    while time.monotonic() < deadline:
        time.sleep(window)
        after = _cpu_times()
        spent = after[1] - before[1]
        if spent > 0 and (after[0] - before[0]) / spent >= idle:
            return
        before = after


def run(variant: str, n: int) -> list[float]:
    settle()
    cmd = VARIANTS[variant][1]
    # The checkout this script is in, whatever the venv's editable install points at.
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{HERE.parent}"}
    out = subprocess.run([*cmd, str(n)], cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"variant {variant} (n={n}) failed:\n{out.stderr[-2000:]}")
    return [float(x) for x in out.stdout.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default="a,b,c,d,a*,e,a-nat,b-nat")
    args = parser.parse_args()
    chosen = args.variants.split(",")
    build_floor()
    if "e" in chosen and not (shutil.which("mnexec") and Path(SYSTEM_PYTHON).exists()):
        print("(e) skipped: install Debian's `mininet` and `bridge-utils`", file=sys.stderr)
        chosen.remove("e")

    results: dict[tuple[str, int], list[list[float]]] = {}
    tty = sys.stderr.isatty()
    for n in args.sizes:
        for rep in range(args.repeat):
            progress = f"N={n}: run {rep + 1}/{args.repeat} of {len(chosen)} variants"
            print(f"\r{progress}" if tty else progress, end="" if tty else "\n", file=sys.stderr, flush=True)
            for variant in chosen:
                results.setdefault((variant, n), []).append(run(variant, n))
    if tty:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)

    def median(variant: str, n: int, column: int) -> float:
        return statistics.median(r[column] for r in results[(variant, n)])

    print(f"median of {args.repeat} runs, milliseconds; N routers with one device each (stars: N devices)\n")
    header = f"{'variant':<22}" + "".join(f"{'N=' + str(n) + ' build':>14}{'teardown':>10}" for n in args.sizes)
    print(header)
    print("-" * len(header))
    for variant in chosen:
        row = f"({variant}) {VARIANTS[variant][0]:<18}"[:22].ljust(22)
        for n in args.sizes:
            row += f"{median(variant, n, 0):>14.1f}{median(variant, n, 1):>10.1f}"
        print(row)
    if "a" in chosen:
        print(f"\npatchbay_core process RSS per idle node: {median('a', max(args.sizes), 2):.1f} KiB "
              f"(N={max(args.sizes)}; kernel memory of the namespaces not included)")
        print("\nratios (build time; higher is better for patchbay_core):")
        for n in args.sizes:
            ours = median("a", n, 0)
            parts = []
            for other, label in (("b", "vs ip"), ("c", "vs pyroute2"), ("d", "floor/ours")):
                if other in chosen:
                    ratio = median(other, n, 0) / ours
                    parts.append(f"{label} {ratio:.2f}x")
            if "e" in chosen and "a*" in chosen:
                parts.append(f"Mininet star vs our star {median('e', n, 0) / median('a*', n, 0):.2f}x")
            if "a-nat" in chosen and "b-nat" in chosen:
                parts.append(f"HOME NAT: ip+nft vs ours {median('b-nat', n, 0) / median('a-nat', n, 0):.2f}x")
            print(f"  N={n}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
