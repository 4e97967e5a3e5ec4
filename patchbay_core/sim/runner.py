"""Runs sims: each in a lab of its own, several at once with `jobs`, every step with an explicit
timeout, everything a sim started stopped when it ends (or fails, or is interrupted).

A sim's life: prepare builds and binaries, then its topology is built into a new lab (whose
output directory is the sim's directory: events.jsonl, state.json), then its steps run in
order inside one task group that also holds the readers of every process's output. When the
steps end, processes still running are stopped (their results collected), the lab is closed,
and sim.json, results.json and results.md are written whatever happened.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import time
import tomllib
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..errors import PatchbayError, SimError, TopologyError
from ..opts import LabOpts, OutDir
from ..topofile import open_topology
from .binaries import Binaries
from .context import SimContext, SimEvents
from .loader import load_sims, wrap_topology_error
from .model import Sim, Step
from .output import Listener, RunOutput, SimRecord, log_entries, timestamp, write_sim_files
from .source import display_name
from .steps import execute


@dataclass
class RunOptions:
    work_dir: Path = Path(".patchbay-work")
    jobs: int = 1
    filter: str | None = None
    project_root: Path | None = None  # where [[prepare]] and workspace builds run (default: cwd)
    handle_signals: bool = False  # SIGINT/SIGTERM interrupt the run (the CLI); off inside tests
    argv: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    output: RunOutput

    @property
    def status(self) -> str:
        return self.output.status

    @property
    def records(self) -> list[SimRecord]:
        return self.output.records

    @property
    def ok(self) -> bool:
        return self.status == "done" and bool(self.records) and all(r.status == "ok" for r in self.records)


class NoSims(PatchbayError):
    """Nothing to run: no sim file found, or none matched --filter."""


# ---- inputs ---------------------------------------------------------------------------------


def sim_files(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; directories are searched for sim files (skipping topos/ and files that
    have neither [sim] nor [[step]], such as shared defaults)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for candidate in sorted(path.rglob("*.toml")):
                if "topos" in candidate.relative_to(path).parts[:-1]:
                    continue
                if _looks_like_sim(candidate):
                    out.append(candidate)
        elif path.exists():
            out.append(path)
        else:
            raise NoSims(f"no such sim file or directory: {item}")
    return list(dict.fromkeys(out))


def _looks_like_sim(path: Path) -> bool:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, tomllib.TOMLDecodeError):
        return True  # let loading say what is wrong with it
    return "sim" in doc or "step" in doc


def matches(name: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


# ---- a run ----------------------------------------------------------------------------------


async def run_paths(inputs: Sequence[str | os.PathLike[str]], opts: RunOptions,
                    listeners: Sequence[Listener] = ()) -> RunResult:
    """Load every sim of `inputs` and run them; the RunResult says how each went. The run
    directory is made once there is something to run; `listeners` hear of every change."""
    files = sim_files(inputs)
    if not files:
        raise NoSims("no sim files found in " + ", ".join(str(i) for i in inputs))
    planned: list[tuple[SimRecord, Sim | None, SimError | None]] = []
    for path in files:
        try:
            sims = load_sims(path)
        except SimError as exc:
            if matches(path.stem, opts.filter):
                planned.append((SimRecord(name=path.stem, file=display_name(path.resolve())), None, exc))
            continue
        for sim in sims:
            if matches(sim.name, opts.filter):
                record = SimRecord(name=sim.name, file=display_name(sim.file), variant=sim.variant,
                                   steps_total=sum(1 for s in sim.steps if not s.skip))
                planned.append((record, sim, None))
    if not planned:
        raise NoSims(f"no sim matches --filter {opts.filter!r}" if opts.filter else "the files hold no sims")
    output = RunOutput(opts.work_dir, opts.argv)
    output.listeners.extend(listeners)
    output.records = [p[0] for p in planned]
    output.write_manifest()
    output.changed()
    binaries = Binaries(output.root, opts.work_dir, opts.project_root or Path.cwd())
    limiter = anyio.CapacityLimiter(max(1, opts.jobs))
    interrupted = False

    async def one(record: SimRecord, sim: Sim | None, error: SimError | None) -> None:
        async with limiter:
            if sims_scope.cancel_called:
                return
            if sim is None:
                assert error is not None
                _failed_to_load(output, record, error)
            else:
                await run_sim(sim, record, output, binaries)

    async def watch_signals() -> None:
        nonlocal interrupted
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _signum in signals:
                # Keep receiving while cleaning up: a second Ctrl-C must not cut the clean-up short.
                if not interrupted:
                    interrupted = True
                    sims_scope.cancel()

    sims_scope = anyio.CancelScope()
    async with anyio.create_task_group() as outer:
        if opts.handle_signals:
            outer.start_soon(watch_signals)
        with sims_scope:
            async with anyio.create_task_group() as tg:
                for record, planned_sim, error in planned:
                    tg.start_soon(one, record, planned_sim, error)
        outer.cancel_scope.cancel()
    if sims_scope.cancel_called:
        interrupted = True
        for record in output.records:
            if record.status == "pending":
                record.status = "interrupted"
    output.finish("interrupted" if interrupted else "done")
    return RunResult(output)


def _failed_to_load(output: RunOutput, record: SimRecord, error: SimError) -> None:
    record.sim_dir = output.sim_dir(record.name)
    record.started = record.ended = time.time()
    record.status = "error"
    record.error = error_info(error, "load", None)
    write_sim_files(record, sim_json(record, None, [], {}), {})
    output.write_combined()
    output.write_manifest()
    output.changed()


# ---- one sim --------------------------------------------------------------------------------


async def run_sim(sim: Sim, record: SimRecord, output: RunOutput, binaries: Binaries) -> None:
    record.status = "running"
    record.started = time.time()
    record.sim_dir = sim_dir = output.sim_dir(sim.name)
    output.changed()
    events = SimEvents(sim_dir / "events.jsonl")
    events.write("sim_started", None, sim=sim.name, file=str(sim.file), variant=sim.variant)
    states = [{"index": s.index, "action": s.action, "id": s.id, "device": s.device,
               "status": "skipped" if s.skip else "pending", "elapsed_ms": None} for s in sim.steps]
    phase = "prepare"
    current: Step | None = None
    ctx: SimContext | None = None
    try:
        for spec in sim.prepare:
            await binaries.prepare(spec)
        phase = "binaries"
        paths = {name: await binaries.resolve(spec) for name, spec in sim.binaries.items()}
        phase = "topology"
        try:
            lab, built = await open_topology(sim.topology, LabOpts(label=sim.name, outdir=OutDir.exact(sim_dir)))
        except TopologyError as exc:
            raise wrap_topology_error(exc, display_name(sim.file)) from exc
        try:
            for name, device in built.devices.items():
                # `iperf3 -c provider` works too; a name that is no host name keeps $NETSIM_IP_<NAME>.
                if device.ip is not None:
                    with contextlib.suppress(PatchbayError):
                        lab.dns_entry(name, device.ip)
            phase = "steps"
            failure: Exception | None = None
            async with anyio.create_task_group() as tg:
                ctx = SimContext(sim, built, sim_dir, paths, events, tg)
                try:
                    for step in sim.steps:
                        if step.skip:
                            events.write("step_skipped", step.device, index=step.index, id=step.id)
                            continue
                        current = step
                        record.step_index, record.step_label = step.index, step.label()
                        output.changed()
                        events.write("step_started", step.device, index=step.index, action=step.action, id=step.id)
                        t0 = time.monotonic()
                        states[step.index]["status"] = "running"
                        await execute(ctx, step)
                        states[step.index].update(status="ok", elapsed_ms=int((time.monotonic() - t0) * 1000))
                        events.write("step_finished", step.device, index=step.index, id=step.id, status="ok")
                        record.steps_done += 1
                    current = None
                    record.step_index, record.step_label = None, "stopping what still runs"
                    output.changed()
                    await ctx.finish()
                except Exception as exc:  # cancellation (an interrupt) is not caught here
                    failure = exc
                    ctx.kill_all()
                except BaseException:
                    ctx.kill_all()
                    raise
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            with anyio.CancelScope(shield=True):
                await lab.close()
        record.status = "ok"
    except anyio.get_cancelled_exc_class():
        record.status = "interrupted"
        record.error = {"phase": phase, "message": "interrupted (Ctrl-C or SIGTERM)", "step": _step_info(current)}
        raise
    except (SimError, PatchbayError, OSError) as exc:
        record.status = "error"
        record.error = error_info(exc, phase, current)
    except BaseExceptionGroup as group:
        record.status = "error"
        record.error = error_info(_first(group), phase, current)
    except Exception as exc:  # a bug of ours: keep the run going, keep the traceback
        record.status = "error"
        record.error = error_info(exc, phase, current)
        record.error["traceback"] = traceback.format_exc()
    finally:
        record.ended = time.time()
        if current is not None and states[current.index]["status"] == "running":
            states[current.index]["status"] = record.status if record.status == "interrupted" else "error"
        record.results = list(ctx.results) if ctx else []
        record.warnings = list(ctx.warnings) if ctx else []
        captures = dict(ctx.captures.values) if ctx else {}
        if ctx is not None:
            ctx.logs.close()
        events.write("sim_finished", None, status=record.status, error=(record.error or {}).get("message"))
        events.close()
        record.step_index, record.step_label = None, None
        write_sim_files(record, sim_json(record, sim, states, captures), captures)
        output.write_combined()
        output.write_manifest()
        output.changed()


def _first(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group


def _step_info(step: Step | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {"index": step.index, "action": step.action, "id": step.id, "device": step.device}


def error_info(exc: BaseException, phase: str, step: Step | None) -> dict[str, Any]:
    return {
        "phase": phase,
        "message": str(exc),
        "file": getattr(exc, "file", None),
        "line": getattr(exc, "line", None),
        "key": getattr(exc, "key", None),
        "step": _step_info(step),
        "type": type(exc).__name__,
    }


def sim_json(record: SimRecord, sim: Sim | None, states: list[dict[str, Any]],
             captures: dict[str, str]) -> dict[str, Any]:
    assert record.sim_dir is not None
    setup: dict[str, Any] = {"sim_path": record.file}
    if sim is not None:
        topo = sim.topology
        setup.update({
            "topology_ref": sim.topology_ref,
            "topology_mode": "external" if sim.topology_ref else "inline",
            "topology_file": display_name(sim.topology_file) if sim.topology_file else None,
            "routers": len(topo.routers),
            "devices": len(topo.devices),
            "regions": len(topo.regions),
            "steps": sim.raw_steps,
            "expanded_steps": len(sim.steps),
        })
    logs = log_entries(record.sim_dir)
    return {
        "sim": record.name,
        "sim_dir": record.sim_dir.name,
        "file": record.file,
        "variant": record.variant,
        "status": record.status,
        "started_at": timestamp(record.started),
        "ended_at": timestamp(record.ended),
        "runtime_ms": record.runtime_ms,
        "setup": setup,
        "steps": states,
        "captures": captures,
        "results": [r.as_json() for r in record.results],
        "warnings": record.warnings,
        "logs": logs,
        "error_line": _error_line(record.sim_dir, logs),
        "error": record.error,
        "errors": [record.error] if record.error else [],
    }


def _error_line(sim_dir: Path, logs: list[dict[str, Any]]) -> str | None:
    """The last log line that says "error" (as the Rust runner reports it)."""
    last = None
    for entry in logs:
        try:
            text = (sim_dir / entry["path"]).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "error" in line.lower():
                last = line.strip()
    return last
