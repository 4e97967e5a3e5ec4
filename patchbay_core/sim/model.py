"""What a loaded sim is: plain dataclasses, each piece knowing where it was written.

The loader turns a sim file (with its extends, matrix, templates and groups) into `Sim`
objects; the runner only reads them. Every mistake found later (at run time) still names the
file, the line and the key through the `Where` the piece carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SimError

if TYPE_CHECKING:
    from ..link import LinkCondition
    from ..topofile import Topology

ACTIONS = ("run", "spawn", "wait-for", "wait", "set-link-condition", "link-down", "link-up", "set-default-route",
           "gen-certs", "gen-file", "assert")
ACTION_ALIASES = {"set-impair": "set-link-condition", "switch-route": "set-default-route"}
PARSERS = ("text", "ndjson", "json")
RESULT_FIELDS = ("duration", "up_bytes", "down_bytes", "latency_ms")
DEFAULT_TIMEOUT = 300.0  # seconds: the book's wait-for default, also for runs and capture waits


@dataclass(frozen=True)
class Where:
    """A place in a sim file: the file, its line (best effort), the key path and the step."""

    file: str | None
    line: int | None
    key: str
    step: str | None = None

    def error(self, message: str) -> SimError:
        return sim_error(message, file=self.file, line=self.line, key=self.key, step=self.step)

    def for_step(self, step: str | None) -> Where:
        return Where(self.file, self.line, self.key, step)


def sim_error(message: str, *, file: str | None = None, line: int | None = None, key: str | None = None,
              step: str | None = None) -> SimError:
    return SimError(message, file=file, line=line, step=step, key=key)


@dataclass
class CaptureSpec:
    """`[step.captures.NAME]`: where a value comes from in a process's output."""

    name: str
    where: Where
    pipe: str = "stdout"
    regex: re.Pattern[str] | None = None
    match: dict[str, str] = field(default_factory=dict)
    pick: str | None = None


@dataclass
class ResultsSpec:
    """`[step.results]`: capture keys ("id.name") behind the normalized result fields."""

    where: Where
    duration: str | None = None
    up_bytes: str | None = None
    down_bytes: str | None = None
    latency_ms: str | None = None

    def keys(self) -> dict[str, str]:
        return {f: k for f in RESULT_FIELDS if (k := getattr(self, f)) is not None}


@dataclass
class Check:
    """One assertion: `step_id.capture OP rhs`."""

    text: str
    lhs: str
    op: str
    rhs: str
    where: Where


@dataclass
class Step:
    """One step to execute (templates, groups and counted devices already expanded)."""

    index: int
    action: str
    where: Where  # the [[step]] (or group step) table
    keys: dict[str, Where] = field(default_factory=dict)  # where each key was written
    id: str | None = None
    device: str | None = None
    skip: bool = False  # when = "false"
    requires: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)
    parser: str = "text"
    captures: dict[str, CaptureSpec] = field(default_factory=dict)
    results: ResultsSpec | None = None
    ready_after: float | None = None
    timeout: float | None = None
    duration: float | None = None
    interface: str | None = None
    condition: LinkCondition | None = None  # None: clear
    direction: str = "up"
    to: str | None = None
    checks: list[Check] = field(default_factory=list)
    cn: str = "patchbay"
    san: list[str] = field(default_factory=list)
    content: str | None = None

    @property
    def name(self) -> str:
        """How errors and the display name the step: its id, else its position and action."""
        return self.id if self.id else f"#{self.index + 1} {self.action}"

    def at(self, key: str | None = None) -> Where:
        """Where `key` of this step was written (the step table when the key was not)."""
        where = self.keys.get(key, self.where) if key else self.where
        return where.for_step(self.name)

    def label(self) -> str:
        parts = [self.action]
        if self.id:
            parts.append(self.id)
        if self.device:
            parts.append(f"@{self.device}")
        return " ".join(parts)


@dataclass
class BinarySpec:
    """`[[binary]]`: a named program that steps reference as `${binary.NAME}`."""

    name: str
    mode: str  # path | fetch | build | target
    where: Where
    base_dir: Path  # the directory of the file that declared it
    path: str | None = None
    url: str | None = None
    repo: str | None = None
    commit: str = "main"
    example: str | None = None
    bin: str | None = None
    features: tuple[str, ...] = ()
    all_features: bool = False

    def fingerprint(self) -> tuple[object, ...]:
        return (self.name, self.mode, str(self.base_dir), self.path, self.url, self.repo, self.commit,
                self.example, self.bin, self.features, self.all_features)


@dataclass
class PrepareSpec:
    """`[[prepare]]`: examples and bins to build from the project workspace first."""

    where: Where
    examples: tuple[str, ...] = ()
    bins: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    all_features: bool = False


@dataclass
class Sim:
    """One simulation to run (one variant of a file with a [matrix])."""

    name: str
    file: Path
    where: Where  # the [sim] table
    topology: Topology
    topology_ref: str | None  # [sim] topology, when the topology came from a file
    topology_file: Path | None
    steps: list[Step]
    binaries: dict[str, BinarySpec]  # the ones the steps reference
    prepare: list[PrepareSpec]
    variant: dict[str, str] = field(default_factory=dict)  # ${matrix.*} values of this variant
    raw_steps: int = 0  # [[step]] entries in the file, before expansion
