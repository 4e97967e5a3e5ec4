"""The state of one running sim: its lab, captures, processes, results; what steps share."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from ..handles import Device, Router
from ..topofile import BuiltTopology
from .captures import CaptureStore
from .interpolate import interpolate, netsim_ip_var
from .model import DEFAULT_TIMEOUT, Sim, Step, Where
from .parsers import OutputParser
from .procs import NodeLogs, StepProcess, describe_exit
from .results import StepResult, collect


class SimEvents:
    """Appends the runner's events to the sim's events.jsonl, next to the lab's own
    (same shape: ts, kind, node, fields; whole lines, so the two writers do not mix)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, kind: str, node: str | None = None, **fields: Any) -> None:
        line = json.dumps({"ts": time.time(), "kind": kind, "node": node, **fields}, default=str,
                          separators=(",", ":"))
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class SimContext:
    def __init__(self, sim: Sim, built: BuiltTopology, sim_dir: Path, binaries: Mapping[str, Path],
                 events: SimEvents, tg: anyio.abc.TaskGroup) -> None:
        self.sim = sim
        self.built = built
        self.dir = sim_dir
        self.binaries = {k: str(v) for k, v in binaries.items()}
        self.events = events
        self.tg = tg
        self.captures = CaptureStore()
        self.captures.on_record = lambda key, value: events.write("capture", None, key=key, value=value)
        self.processes: dict[str, StepProcess] = {}
        self.pending_results: dict[str, Step] = {}  # spawn id -> its step, results collected at wait-for
        self.results: list[StepResult] = []
        self.logs = NodeLogs(sim_dir / "nodes")
        self.warnings: list[str] = []
        self.netsim: dict[str, str] = {}
        for name, router in built.routers.items():
            if router.uplink_ip is not None:
                self.netsim[netsim_ip_var(name)] = str(router.uplink_ip)
        for name, device in built.devices.items():
            # IPv4 where the device has it; an IPv6-only device's $NETSIM_IP_ is its IPv6
            # address. $NETSIM_IP6_<DEVICE> always names the IPv6 one.
            ip = device.ip if device.ip is not None else device.ip6
            if ip is not None:
                self.netsim[netsim_ip_var(name)] = str(ip)
            if device.ip6 is not None:
                self.netsim[netsim_ip_var(name).replace("NETSIM_IP_", "NETSIM_IP6_", 1)] = str(device.ip6)
        self.step: Step | None = None
        self.deadline = 0.0
        self._where: Where | None = None

    # ---- the step being run -----------------------------------------------------------------

    def begin(self, step: Step) -> None:
        self.step = step
        self.deadline = anyio.current_time() + (step.timeout if step.timeout is not None else DEFAULT_TIMEOUT)

    def remaining(self) -> float:
        return max(0.0, self.deadline - anyio.current_time())

    # ---- the interpolate.Resolver protocol ---------------------------------------------------------------------------

    def binary(self, name: str) -> str:
        return self.binaries[name]  # the loader checked every reference

    def var(self, name: str) -> str | None:
        return self.netsim.get(name.upper())

    async def capture(self, key: str) -> str:
        assert self._where is not None
        return await self.captures.wait(key, self.remaining(), self._where)

    async def interpolate(self, text: str, where: Where) -> str:
        self._where = where
        return await interpolate(text, self)

    async def wait_requires(self, step: Step) -> None:
        for key in step.requires:
            await self.captures.wait(key, self.remaining(), step.at("requires"), f"required capture {key!r}")

    # ---- nodes ------------------------------------------------------------------------------

    def node(self, name: str) -> Device | Router:
        if name in self.built.devices:
            return self.built.devices[name]
        return self.built.routers[name]

    def device(self, name: str) -> Device:
        return self.built.devices[name]

    def first_iface(self, name: str) -> str:
        """The device's first interface in the topology file (the book's default)."""
        return self.sim.topology.device(name).ifaces[0].name

    # ---- processes --------------------------------------------------------------------------

    async def start_process(self, step: Step) -> StepProcess:
        assert step.device is not None
        argv = [await self.interpolate(c, step.at("cmd")) for c in step.cmd]
        env = dict(os.environ)
        env.update(self.netsim)
        for key, value in step.env.items():
            env[key] = await self.interpolate(value, step.at("env"))
        sid = step.id or step.name
        self.captures.started(sid)
        parser = OutputParser(step.parser, step.captures, lambda name, value: self.captures.record(f"{sid}.{name}",
                                                                                                   value))
        try:
            proc = await self.node(step.device).spawn_command(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                              stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            self.captures.over(sid, "did not start")
            raise step.at("cmd").error(f"cannot start {argv[0]!r} on {step.device!r}: "
                                       f"{exc.strerror or exc}") from None
        sp = StepProcess(sid, step.device, proc, parser, self.logs, lambda sp: self._process_over(step, sp))
        sp.start(self.tg)
        self.events.write("step_process_started", step.device, step=sid, argv=argv, pid=proc.pid)
        return sp

    def _process_over(self, step: Step, sp: StepProcess) -> None:
        code = sp.returncode if sp.returncode is not None else -1
        self.captures.over(sp.step_id, describe_exit(code))
        self.events.write("step_process_exited", sp.node, step=sp.step_id, status=code)
        for warning in sp.warnings:
            self.warn(step, warning)

    def collect_results(self, step: Step) -> None:
        if step.results is None:
            return
        record = collect(step.id or step.name, step.results, self.captures.values)
        if record is not None:
            self.results.append(record)
            self.events.write("step_result", step.device, **record.as_json())

    def warn(self, step: Step | None, message: str) -> None:
        text = f"step {step.name}: {message}" if step is not None else message
        self.warnings.append(text)
        self.events.write("warning", step.device if step else None, message=text)

    async def finish(self) -> None:
        """End what is still running (spawned and never waited for); collect their results."""
        for sid, sp in list(self.processes.items()):
            if not sp.finished:
                self.events.write("step_process_stopping", sp.node, step=sid)
                await sp.stop()
        for sid, step in list(self.pending_results.items()):
            self.collect_results(step)
            self.pending_results.pop(sid, None)

    def kill_all(self) -> None:
        """On failure or interruption: SIGKILL every process at once (closing the lab reaps them
        and whatever they forked)."""
        for sp in self.processes.values():
            sp.kill()
