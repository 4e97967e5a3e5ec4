"""Run directories as the devtools UI sees them: finding them under a root, reading one, and
watching it for what is appended. Plain files only (no web here), tolerant of anything missing
or half-written: a lab or a sim may be writing while we read.

What is found (see outdir.py and sim/output.py for the writers):
- a lab run: a directory with events.jsonl or state.json (`<outdir>/<timestamp>-<label>/`, a
  pytest test's directory, a sim's directory);
- a sim run: a directory with manifest.json or progress.json (`.patchbay-work/sim-*/`), whose
  sim directories (sim.json, results.json, nodes/<node>/stdout.log, ...) are runs of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

MAX_DEPTH = 6  # <run dir>/<project>/<invocation>/.patchbay-work/sim-*/<sim>
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".binaries", ".cargo-target", "nodes",
             "files", "certs", ".incoming", "site-packages"}
MAX_TEXT = 4 << 20  # bytes of a text file sent in one answer (the end of it when larger)
LAB_STAMP = re.compile(r"^(\d{8}-\d{6})(?:-\d{6})?-(.+)$")
NODE_FILE = re.compile(r"^(?P<kind>[a-z0-9_]+)\.(?P<node>.+)\.(?P<stream>log\.jsonl|events\.jsonl|stdout\.log|"
                       r"stderr\.log)$")
CAPTURE_FILE = re.compile(r"^(?P<kind>[a-z0-9_]+)\.(?P<node>.+)\.(?P<iface>[^.]+)\.pcapng$")
STREAMS = {"log.jsonl": "log", "events.jsonl": "events", "stdout.log": "stdout", "stderr.log": "stderr"}


class RunNotFound(LookupError):
    pass


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or not (yet) valid."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def is_lab_dir(path: Path) -> bool:
    return (path / "events.jsonl").is_file() or (path / "state.json").is_file()


def is_sim_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "progress.json").is_file()


def _mtime(path: Path) -> float:
    best = 0.0
    for name in ("events.jsonl", "state.json", "progress.json", "manifest.json", "sim.json"):
        with contextlib.suppress(OSError):
            best = max(best, (path / name).stat().st_mtime)
    if not best:
        with contextlib.suppress(OSError):
            best = path.stat().st_mtime
    return best


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class RunInfo:
    id: str  # the path below the root, with '/'
    kind: str  # "lab", "sim" (a sim's directory) or "simrun" (a `patchbay run` invocation)
    label: str
    mtime: float
    parent: str | None = None  # the sim run a sim belongs to
    status: str | None = None
    latest: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "mtime": self.mtime,
                "updated": _iso(self.mtime), "parent": self.parent, "status": self.status,
                "latest": self.latest, **self.extra}


def _rel(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return "" if rel == "." else rel


def _lab_label(path: Path) -> str:
    state = read_json(path / "state.json")
    if isinstance(state, dict) and state.get("label"):
        return str(state["label"])
    m = LAB_STAMP.match(path.name)
    return m.group(2) if m else path.name


def discover(root: Path, prefix: str = "") -> list[RunInfo]:
    """Every run under `root` (below `prefix` only, when given), newest first. Symlinks are
    not followed except `latest`, which only marks the run it points at."""
    root = root.resolve()
    start = resolve_inside(root, prefix) if prefix else root
    runs: list[RunInfo] = []
    latest_targets: set[Path] = set()

    def walk(path: Path, depth: int) -> None:
        if is_sim_run_dir(path):
            runs.extend(_sim_run(root, path))
            return
        if is_lab_dir(path):
            runs.append(RunInfo(_rel(root, path), "lab", _lab_label(path), _mtime(path)))
            return
        if depth >= MAX_DEPTH:
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name == "latest" and entry.is_symlink():
                with contextlib.suppress(OSError):
                    latest_targets.add(Path(entry.path).resolve())
                continue
            if entry.name in SKIP_DIRS or (entry.name.startswith(".") and entry.name != ".patchbay-work"):
                continue
            if entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), depth + 1)

    if start.is_dir():
        walk(start, 0)
    for run in runs:
        if (root / run.id).resolve() in latest_targets:
            run.latest = True
    runs.sort(key=lambda r: r.mtime, reverse=True)
    return runs


def _sim_run(root: Path, path: Path) -> Iterator[RunInfo]:
    manifest = read_json(path / "manifest.json") or read_json(path / "progress.json") or {}
    status = manifest.get("status") if isinstance(manifest, dict) else None
    run_id = _rel(root, path)
    yield RunInfo(run_id, "simrun", path.name, _mtime(path), status=status)
    sims = manifest.get("simulations") if isinstance(manifest, dict) else None
    listed: dict[str, dict[str, Any]] = {}
    for sim in sims or []:
        if isinstance(sim, dict) and sim.get("sim_dir"):
            listed[str(sim["sim_dir"])] = sim
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue
        sim_dir = Path(entry.path)
        if not ((sim_dir / "sim.json").is_file() or is_lab_dir(sim_dir) or entry.name in listed):
            continue
        summary = listed.get(entry.name, {})
        sim_json = read_json(sim_dir / "sim.json")
        status = (sim_json or {}).get("status") if isinstance(sim_json, dict) else None
        yield RunInfo(_rel(root, sim_dir), "sim", str(summary.get("sim") or entry.name), _mtime(sim_dir),
                      parent=run_id, status=status or summary.get("status"))


def resolve_inside(root: Path, rel: str) -> Path:
    """`root/rel`, refusing anything that would leave root (.., absolute paths, symlinks out)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or "\0" in rel:
        raise RunNotFound(rel)
    path = (root / pure).resolve()
    if path != root and root not in path.parents:
        raise RunNotFound(rel)
    return path


# ---- one run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextFile:
    path: str  # relative to the run dir
    node: str | None
    node_kind: str | None  # "device", "router", ... (None: the lab itself)
    stream: str  # "lab" (events.jsonl), "log", "events", "stdout", "stderr"

    def as_json(self, size: int) -> dict[str, Any]:
        return {"path": self.path, "node": self.node, "node_kind": self.node_kind, "stream": self.stream,
                "size": size}


def text_files(run_dir: Path) -> list[TextFile]:
    """The files of a run that the UI shows as lines (and that grow while it runs)."""
    out = []
    if (run_dir / "events.jsonl").is_file():
        out.append(TextFile("events.jsonl", None, None, "lab"))
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        names = []
    for name in names:
        m = NODE_FILE.match(name)
        if m:
            out.append(TextFile(name, m.group("node"), m.group("kind"), STREAMS[m.group("stream")]))
    nodes = run_dir / "nodes"
    if nodes.is_dir():
        for node_dir in sorted(p for p in nodes.iterdir() if p.is_dir()):
            for f in sorted(node_dir.iterdir()):
                if f.is_file() and f.suffix in (".log", ".jsonl"):
                    stream = f.name.split(".")[0]
                    if f.name.endswith(".events.jsonl"):
                        stream = "events"
                    elif f.name.endswith(".log.jsonl"):
                        stream = "log"
                    out.append(TextFile(f.relative_to(run_dir).as_posix(), node_dir.name, None, stream))
    return out


def captures(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(run_dir.rglob("*.pcapng")):
        if not path.is_file():
            continue
        rel = path.relative_to(run_dir).as_posix()
        m = CAPTURE_FILE.match(path.name)
        try:
            size = path.stat().st_size
        except OSError:
            continue
        out.append({"path": rel, "size": size, "node": m.group("node") if m else None,
                    "iface": m.group("iface") if m else None, "node_kind": m.group("kind") if m else None})
    return out


def read_lines(path: Path, offset: int = 0, limit: int = MAX_TEXT) -> tuple[list[str], int, bool, bool]:
    """Complete lines from `offset` on (at most the last `limit` bytes): the lines, the offset
    after the last complete one, whether the start was cut off, and whether the file shrank
    below `offset` (truncated or replaced: the lines are then read from its start)."""
    reset = False
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset, reset = 0, True
            cut = size - offset > limit
            start = size - limit if cut else offset
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return [], offset, False, False
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset if not cut else start, cut, reset
    body = data[: end + 1]
    if cut:
        body = body[body.find(b"\n") + 1 :]  # drop the partial first line
    lines = body.decode("utf-8", errors="replace").split("\n")[:-1]
    return lines, start + end + 1, cut, reset


def results_of(run_dir: Path) -> list[dict[str, Any]]:
    """Step results as rows (sim, id, down/up MB/s, latency, ...), from combined-results.json
    of a sim run or results.json of a sim (or of any run that has one)."""
    from ..sim.results import StepResult

    rows: list[dict[str, Any]] = []

    def add(sim: str, steps: Any) -> None:
        for step in steps if isinstance(steps, list) else []:
            if not isinstance(step, dict):
                continue
            r = StepResult.from_json(step)
            rows.append({"sim": sim, "id": r.id, "down_bytes": r.down_bytes, "up_bytes": r.up_bytes,
                         "duration": r.duration, **r.computed()})

    combined = read_json(run_dir / "combined-results.json")
    if isinstance(combined, dict):
        for run in combined.get("runs") or []:
            if isinstance(run, dict):
                add(str(run.get("sim") or run.get("sim_dir") or "?"), run.get("steps"))
        return rows
    results = read_json(run_dir / "results.json")
    if isinstance(results, dict):
        add(str(results.get("sim") or run_dir.name), results.get("steps"))
    return rows


def run_detail(root: Path, run_id: str) -> dict[str, Any]:
    """Everything the UI shows of one run, with the lines of its text files and the offsets
    they were read up to (for the live stream to go on from)."""
    root = root.resolve()
    run_dir = resolve_inside(root, run_id)
    if not run_dir.is_dir():
        raise RunNotFound(run_id)
    kind = "simrun" if is_sim_run_dir(run_dir) else ("sim" if (run_dir / "sim.json").is_file() else "lab")
    texts = {}
    files = []
    for tf in text_files(run_dir):
        lines, offset, cut, _reset = read_lines(run_dir / tf.path)
        texts[tf.path] = {"lines": lines, "offset": offset, "truncated": cut}
        files.append(tf.as_json(offset))
    state_path = run_dir / "state.json"
    detail: dict[str, Any] = {
        "id": _rel(root, run_dir),
        "kind": kind,
        "label": _lab_label(run_dir) if kind != "simrun" else run_dir.name,
        "state": read_json(state_path),
        "state_mtime": _stat_key(state_path),
        "files": files,
        "texts": texts,
        "captures": captures(run_dir) if kind != "simrun" else [],
        "results": results_of(run_dir),
        "sim": read_json(run_dir / "sim.json"),
        "manifest": read_json(run_dir / "manifest.json") or read_json(run_dir / "progress.json"),
        "run_json": read_json(run_dir / "run.json"),
    }
    if kind == "simrun":
        detail["children"] = [r.as_json() for r in _sim_run(root, run_dir)][1:]
    return detail


def _stat_key(path: Path) -> list[float] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


class RunWatcher:
    """Polls one run for lines appended to its text files, new files and a changed
    state.json. `poll()` returns what happened since the last call, as stream messages."""

    def __init__(self, root: Path, run_id: str, offsets: dict[str, int] | None = None,
                 state_key: list[float] | None = None) -> None:
        self.root = root.resolve()
        self.run_dir = resolve_inside(self.root, run_id)
        self.offsets = dict(offsets or {})
        self.state_key = state_key
        self.capture_sizes: dict[str, int] | None = None

    def poll(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for tf in text_files(self.run_dir):
            offset = self.offsets.get(tf.path)
            if offset is None:
                out.append(("file", tf.as_json(0)))
                offset = 0
            lines, new_offset, _cut, reset = read_lines(self.run_dir / tf.path, offset)
            self.offsets[tf.path] = new_offset
            if lines or reset:
                out.append(("lines", {"path": tf.path, "lines": lines, "offset": new_offset, "reset": reset}))
        state_path = self.run_dir / "state.json"
        key = _stat_key(state_path)
        if key is not None and key != self.state_key:
            state = read_json(state_path)
            if state is not None:  # a half-written file: try again next time
                self.state_key = key
                out.append(("state", state))
        caps = {c["path"]: c["size"] for c in captures(self.run_dir)}
        if self.capture_sizes is None:
            self.capture_sizes = caps
        elif caps != self.capture_sizes:
            self.capture_sizes = caps
            out.append(("captures", captures(self.run_dir)))
        return out
