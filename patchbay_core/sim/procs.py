"""Processes of run and spawn steps: their output goes, line by line, to the node's logs
(`nodes/<device>/stdout.log`, `stderr.log`) and to the step's parser."""

from __future__ import annotations

import collections
import contextlib
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import IO

import anyio
import anyio.abc

from ..processes import NodeProcess
from .parsers import OutputParser

PUMP_GRACE = 2.0  # seconds to drain pipes after exit (a daemon child may hold them open)
STOP_GRACE = 1.0  # seconds between SIGTERM and SIGKILL


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "node"


class NodeLogs:
    """The sim's per-node log files, opened on first use, appended to line by line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[tuple[str, str], IO[bytes]] = {}

    def path(self, node: str, pipe: str) -> Path:
        return self.root / safe_name(node) / f"{pipe}.log"

    def write(self, node: str, pipe: str, data: bytes) -> None:
        f = self._files.get((node, pipe))
        if f is None:
            path = self.path(node, pipe)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self._files[(node, pipe)] = open(path, "ab")  # noqa: SIM115
        f.write(data)
        f.flush()

    def close(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()


class StepProcess:
    """A run or spawn step's process and the tasks that read its output. One watcher task waits
    for the exit (a pidfd has one waiter); everyone else waits for `exited`."""

    def __init__(self, step_id: str, node: str, proc: NodeProcess, parser: OutputParser, logs: NodeLogs,
                 on_exit: Callable[[StepProcess], None]) -> None:
        self.step_id = step_id
        self.node = node
        self.proc = proc
        self.parser = parser
        self.logs = logs
        self.on_exit = on_exit
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=8)
        self.warnings: list[str] = []
        self.returncode: int | None = None
        self.exited = anyio.Event()  # set once the exit is seen and the output read
        self._pumps_done = anyio.Event()
        self._open = 0
        self._scopes: list[anyio.CancelScope] = []

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        streams = [("stdout", self.proc.stdout), ("stderr", self.proc.stderr)]
        self._open = sum(1 for _, s in streams if s is not None)
        if not self._open:
            self._pumps_done.set()
        for pipe, stream in streams:
            if stream is not None:
                tg.start_soon(self._pump, pipe, stream)
        tg.start_soon(self._watch)

    async def _pump(self, pipe: str, stream: anyio.abc.ByteReceiveStream) -> None:
        pending = b""
        scope = anyio.CancelScope()
        self._scopes.append(scope)
        try:
            with scope:
                while True:
                    try:
                        chunk = await stream.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                        break
                    data = pending + chunk
                    *lines, pending = data.split(b"\n")
                    if lines:
                        self.logs.write(self.node, pipe, b"\n".join(lines) + b"\n")
                    for line in lines:
                        self._line(pipe, line)
            if pending:
                self.logs.write(self.node, pipe, pending + b"\n")
                self._line(pipe, pending)
        finally:
            self._open -= 1
            if self._open <= 0:
                self._pumps_done.set()

    def _line(self, pipe: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if pipe == "stderr" and line.strip():
            self.stderr_tail.append(line)
        self.parser.line(pipe, line)

    async def _watch(self) -> None:
        code = await self.proc.wait()
        with anyio.move_on_after(PUMP_GRACE):
            await self._pumps_done.wait()
        for scope in self._scopes:
            scope.cancel()
        self.warnings += self.parser.finish()
        self.returncode = code
        self.exited.set()
        self.on_exit(self)

    @property
    def finished(self) -> bool:
        return self.exited.is_set()

    async def wait(self) -> int:
        """The exit status, once the process exited and its output was read."""
        await self.exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def stop(self) -> int:
        """End the process (SIGTERM, then SIGKILL) and finish reading its output."""
        if not self.finished:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_GRACE):
                await self.exited.wait()
            if not self.finished:
                self.kill()
        return await self.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
