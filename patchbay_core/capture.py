"""Packet captures users hold: `cap = await device.capture("eth0")`, later `await cap.stop()`.

A capture writes pcapng (open it in Wireshark, or `scapy.utils.rdpcap`) into the lab's
output directory as `{kind}.{node}.{iface}.pcapng`, both directions, readable while it runs.
The C core does the work (see `kernel.capture`); this module only decides where the file
goes and runs the blocking calls on a thread the caller chooses, so no event loop waits.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from .kernel.capture import DEFAULT_SNAPLEN, PacketCapture

T = TypeVar("T")
# Runs a blocking function somewhere else and awaits it: anyio.to_thread.run_sync by default;
# a lab may pass its kernel worker instead.
Runner = Callable[[Callable[[], Any]], Awaitable[Any]]
# Told once when a capture stops (the lab writes a `capture_stopped` event).
StopHook = Callable[["Capture"], None]

_path_lock = threading.Lock()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def capture_path(outdir: str | os.PathLike[str], kind: str, node: str, iface: str) -> Path:
    """`<outdir>/{kind}.{node}.{iface}.pcapng`, or `...{iface}-2.pcapng` and so on when a
    capture of that interface already wrote one: a second capture never overwrites the first."""
    base = Path(outdir) / f"{_safe(kind)}.{_safe(node)}.{_safe(iface)}"
    with _path_lock:
        n = 1
        while True:
            path = base.with_name(base.name + ("" if n == 1 else f"-{n}") + ".pcapng")
            try:
                # Claim the name now: two captures started at once must not share it.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                n += 1
                continue
            os.close(fd)
            return path


async def _default_runner(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


class Capture:
    """One running (or stopped) capture of one node interface."""

    def __init__(self, packet_capture: PacketCapture, node: str, iface: str, path: Path,
                 run: Runner = _default_runner, on_stop: StopHook | None = None) -> None:
        self._pc = packet_capture
        self._run = run
        self._on_stop = on_stop
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.node = node
        self.iface = iface
        self.path = path

    @classmethod
    async def start(cls, ns_fd: int, node: str, iface: str, path: str | os.PathLike[str], *,
                    snaplen: int = DEFAULT_SNAPLEN, run: Runner = _default_runner,
                    on_stop: StopHook | None = None) -> Capture:
        """Start capturing `iface` of the namespace `ns_fd` into `path`. A wrong interface
        name raises TopologyError naming the node and the interfaces it has."""
        target = Path(path)

        def start() -> PacketCapture:
            return PacketCapture.start(ns_fd, iface, target, snaplen, node=node)

        pc = await run(start)
        return cls(pc, node, iface, target, run, on_stop)

    @property
    def packets(self) -> int:
        """Packets in the file so far."""
        return self._pc.packets

    @property
    def dropped(self) -> int:
        """Packets the kernel had to drop because the capture could not keep up."""
        return self._pc.dropped

    @property
    def running(self) -> bool:
        return self._pc.running

    def stop_sync(self) -> None:
        """Stop from a plain thread (a lab closing); idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                self._pc.stop()
            finally:
                if self._on_stop is not None:
                    self._on_stop(self)

    async def stop(self) -> None:
        """Write what is left and close the file. Safe to call twice (and concurrently)."""
        if not self._pc.running:
            return
        await self._run(self.stop_sync)

    async def __aenter__(self) -> Capture:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Capture {self.node}:{self.iface} -> {self.path} ({state}, {self.packets} packets)>"
