"""Helpers of the sim runner's tests: write a sim tree, load it, run it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from patchbay_core.sim import load_sims
from patchbay_core.sim.model import Sim
from patchbay_core.sim.runner import RunOptions, RunResult, run_paths

HERE = Path(__file__).parent
BOOK = HERE / "book"
REPO = HERE.parent.parent
# A step command (TOML array items) that prints what it is told: see progs/emit.py.
EMIT = f'"{sys.executable}", "{HERE / "progs" / "emit.py"}"'

TWO_HOSTS = """
[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"
[device.b.eth0]
gateway = "dc"
"""


def write(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path -> TOML text, dedented) under root; returns the first path."""
    first = None
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        first = first or path
    assert first is not None
    return first


def load(root: Path, text: str, name: str = "sim.toml", **more: str) -> list[Sim]:
    path = write(root, {name: text, **more})
    return load_sims(path)


def load_one(root: Path, text: str, **more: str) -> Sim:
    sims = load(root, text, **more)
    assert len(sims) == 1
    return sims[0]


async def run(root: Path, text: str, name: str = "sim.toml", jobs: int = 1, filter: str | None = None,
              **more: str) -> RunResult:
    path = write(root, {name: text, **more})
    return await run_paths([path], RunOptions(work_dir=root / "work", jobs=jobs, filter=filter))


def sim_text(steps: str, topology: str = TWO_HOSTS, name: str = "t") -> str:
    return f'[sim]\nname = "{name}"\n' + textwrap.dedent(topology) + "\n" + textwrap.dedent(steps)
