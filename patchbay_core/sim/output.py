"""The work tree of `patchbay run` (the book's "Output files"):

    <work dir>/latest -> sim-YYMMDD-HHMMSS
    <work dir>/sim-YYMMDD-HHMMSS/
        manifest.json  progress.json  combined-results.json  combined-results.md
        <sim>/sim.json  results.json  results.md  events.jsonl  nodes/<node>/{stdout,stderr}.log
              files/<id>/content  certs/<id>/{cert,key}.pem

`RunOutput` owns the run directory and the live state of every sim (`SimRecord`); each change
rewrites progress.json (atomically) and tells the listeners (the terminal display).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import safe_name
from .results import StepResult, md_table, results_json, results_md

Listener = Callable[["RunOutput"], None]


def timestamp(t: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json(path: Path, data: Any) -> None:
    """Write atomically: readers (a UI polling progress.json) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def unique_dir(parent: Path, base: str) -> Path:
    name, n = base, 1
    while True:
        path = parent / name
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            name = f"{base}-{n}"
            n += 1


@dataclass
class SimRecord:
    """One sim of the run: what the progress file, the manifest and the display show."""

    name: str
    file: str
    variant: dict[str, str] = field(default_factory=dict)
    status: str = "pending"  # pending, running, ok, error, interrupted
    sim_dir: Path | None = None
    steps_total: int = 0
    steps_done: int = 0
    step_label: str | None = None
    step_index: int | None = None
    started: float | None = None
    ended: float | None = None
    error: dict[str, Any] | None = None
    results: list[StepResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def runtime_ms(self) -> int | None:
        if self.started is None:
            return None
        return int(((self.ended or time.time()) - self.started) * 1000)

    @property
    def finished(self) -> bool:
        return self.status in ("ok", "error", "interrupted")

    def summary(self, run_root: Path) -> dict[str, Any]:
        sim_dir = self.sim_dir.name if self.sim_dir else None
        return {
            "sim": self.name,
            "file": self.file,
            "variant": self.variant,
            "status": self.status,
            "sim_dir": sim_dir,
            "runtime_ms": self.runtime_ms,
            "sim_json": f"{sim_dir}/sim.json" if sim_dir and self.finished else None,
            "error": self.error["message"] if self.error else None,
        }


class RunOutput:
    def __init__(self, work_root: Path, argv: Sequence[str] = ()) -> None:
        self.work_root = work_root
        work_root.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        stamp = datetime.datetime.now().strftime("sim-%y%m%d-%H%M%S")
        self.root = unique_dir(work_root, stamp)
        self.name = self.root.name
        self.argv = list(argv)
        self.status = "running"  # running, done, interrupted
        self.ended: float | None = None
        self.records: list[SimRecord] = []
        self.listeners: list[Listener] = []
        self._link_latest()

    def _link_latest(self) -> None:
        latest = self.work_root / "latest"
        tmp = self.work_root / f".latest-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.name, tmp)
        if latest.is_dir() and not latest.is_symlink():
            raise OSError(f"{latest} is a directory; remove it (patchbay keeps a symlink there)")
        os.replace(tmp, latest)

    def sim_dir(self, name: str) -> Path:
        return unique_dir(self.root, safe_name(name))

    # ---- live state -------------------------------------------------------------------------

    def changed(self) -> None:
        write_json(self.root / "progress.json", self.progress())
        for listener in self.listeners:
            listener(self)

    def counts(self) -> dict[str, int]:
        statuses = [r.status for r in self.records]
        return {s: statuses.count(s) for s in ("pending", "running", "ok", "error", "interrupted")}

    def progress(self) -> dict[str, Any]:
        counts = self.counts()
        running = [r.name for r in self.records if r.status == "running"]
        return {
            "run": self.name,
            "status": self.status,
            "started_at": timestamp(self.started),
            "updated_at": timestamp(),
            "total": len(self.records),
            "completed": counts["ok"] + counts["error"] + counts["interrupted"],
            "ok": counts["ok"],
            "error": counts["error"],
            "interrupted": counts["interrupted"],
            "current_sim": running[0] if running else None,
            "running": running,
            "simulations": [{
                **r.summary(self.root),
                "steps_total": r.steps_total,
                "steps_done": r.steps_done,
                "step": None if r.step_index is None else {"index": r.step_index, "label": r.step_label},
            } for r in self.records],
        }

    # ---- run-level files --------------------------------------------------------------------

    def write_manifest(self) -> None:
        done = self.status != "running"
        write_json(self.root / "manifest.json", {
            "run": self.name,
            "status": self.status,
            "started_at": timestamp(self.started),
            "ended_at": timestamp(self.ended) if self.ended else None,
            "runtime_ms": int(((self.ended or time.time()) - self.started) * 1000),
            "success": all(r.status == "ok" for r in self.records) if done else None,
            "environment": environment(),
            "argv": self.argv,
            "simulations": [r.summary(self.root) for r in self.records],
        })

    def write_combined(self) -> None:
        runs = []
        for r in self.records:
            if r.sim_dir is None or not r.finished:
                continue
            steps = [{**s.as_json(), **{k: v for k, v in s.computed().items() if k != "latency_ms"}}
                     for s in r.results]
            runs.append({"run": self.name, "sim_dir": r.sim_dir.name, "sim": r.name, "status": r.status,
                         "steps": steps})
        write_json(self.root / "combined-results.json", {"runs": runs})
        (self.root / "combined-results.md").write_text(combined_md(self.name, self.records), encoding="utf-8")

    def finish(self, status: str) -> None:
        self.status = status
        self.ended = time.time()
        self.write_combined()
        self.write_manifest()
        self.changed()


def combined_md(run: str, records: Sequence[SimRecord]) -> str:
    def best(values: list[float | None], digits: int, low: bool = False) -> str:
        found = [v for v in values if v is not None]
        if not found:
            return ""
        return f"{(min(found) if low else max(found)):.{digits}f}"

    summary = [{
        "Sim": r.name, "Status": r.status, "N": str(len(r.results)),
        "Max Down (MB/s)": best([s.down_mb_s() for s in r.results], 2),
        "Max Up (MB/s)": best([s.up_mb_s() for s in r.results], 2),
        "Min Latency (ms)": best([s.latency() for s in r.results], 1, low=True),
    } for r in records if r.finished]
    out = [f"# {run}", "", md_table(summary, ["Sim", "Status", "N", "Max Down (MB/s)", "Max Up (MB/s)",
                                               "Min Latency (ms)"]) or "(no sims finished)", ""]
    from .results import result_rows

    detail = [{"run": run, "sim": r.name, **row} for r in records if r.finished for row in result_rows(r.results)]
    table = md_table(detail, ["run", "sim", "id", "down_bytes", "elapsed_s", "mb_s", "up_bytes", "up_mb_s",
                              "latency_ms"])
    if table:
        out += [table]
    return "\n".join(out).rstrip("\n") + "\n"


def environment() -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("patchbay")
    except metadata.PackageNotFoundError:
        version = None
    return {"patchbay": version, "python": sys.version.split()[0], "kernel": platform.release(),
            "machine": platform.machine(), "cwd": os.getcwd()}


# ---- per-sim files --------------------------------------------------------------------------


def write_sim_files(record: SimRecord, sim_json: Mapping[str, Any], captures: Mapping[str, str]) -> None:
    assert record.sim_dir is not None
    d = record.sim_dir
    (d / "results.json").write_text(results_json(record.name, record.results), encoding="utf-8")
    (d / "results.md").write_text(results_md(record.name, record.status, record.results, captures),
                                  encoding="utf-8")
    write_json(d / "sim.json", sim_json)


def log_entries(sim_dir: Path) -> list[dict[str, Any]]:
    """Every node log the sim wrote (files that exist, with their size)."""
    nodes = sim_dir / "nodes"
    out = []
    if nodes.is_dir():
        for path in sorted(nodes.rglob("*")):
            if path.is_file():
                out.append({"node": path.relative_to(nodes).parts[0], "kind": "text",
                            "path": str(path.relative_to(sim_dir)), "bytes": path.stat().st_size})
    return out
