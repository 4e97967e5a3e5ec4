"""Captured values of a running sim: `step_id.capture` -> its latest value.

Steps that need a value wait for it (`${id.name}`, `requires`). A wait ends when the value
arrives, when the step that would produce it is over without producing it (it can no longer
come: fail at once, naming it), or at the waiting step's timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from .durations import format_seconds
from .interpolate import split_capture_key
from .model import Where


class CaptureStore:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.history: dict[str, list[tuple[float, str]]] = {}  # every value, in order
        self._over: dict[str, str] = {}  # step id -> why it produces nothing more
        self._started: set[str] = set()
        self._changed = anyio.Event()
        self.on_record: Callable[[str, str], None] | None = None

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def record(self, key: str, value: str) -> None:
        self.values[key] = value
        self.history.setdefault(key, []).append((time.time(), value))
        if self.on_record is not None:
            self.on_record(key, value)
        self._wake()

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def started(self, step_id: str) -> None:
        """A step with this id runs (again): its captures may come."""
        self._over.pop(step_id, None)
        self._started.add(step_id)

    def over(self, step_id: str, why: str) -> None:
        """The step with this id produces nothing more (its process exited, it failed, ...)."""
        self._over[step_id] = why
        self._wake()

    async def wait(self, key: str, timeout: float, where: Where, what: str = "") -> str:
        """The value of `key`, once there is one."""
        split = split_capture_key(key)
        sid = split[0] if split else key
        what = what or f"capture {key!r}"
        start = time.monotonic()
        with anyio.move_on_after(timeout):
            while True:
                if key in self.values:
                    return self.values[key]
                if sid in self._over:
                    raise where.error(f"{what} was never produced: step {sid!r} {self._over[sid]} without it")
                await self._changed.wait()
        waited = format_seconds(time.monotonic() - start)
        state = "is still running and has not produced it" if sid in self._started else "has not produced it"
        raise where.error(f"timed out after {waited} waiting for {what} (step {sid!r} {state}; a longer "
                          "timeout = \"...\" on this step waits longer)")
