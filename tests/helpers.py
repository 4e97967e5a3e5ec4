"""Helpers shared by the tests."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc

import patchbay_core as pb
from patchbay_core.kernel import native
from patchbay_core.kernel.namespace import NetNs

T = TypeVar("T")


def netns_inodes_of_process() -> set[int]:
    """Inodes of every network namespace this process holds open (fds) or sits in (threads)."""
    inodes = set()
    for path in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith("net:["):
            inodes.add(int(target[5:-1]))
    return inodes


def lab_netns_inodes(lab: pb.Lab) -> set[int]:
    """Namespaces this process holds, minus the spares the lab's factory keeps ready."""
    spares = lab._factory.spare_inodes() if lab._factory else set()
    return netns_inodes_of_process() - spares


def processes_in(inodes: set[int]) -> list[int]:
    """Pids of every process with a task in one of these network namespaces, or holding one open."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            refs = [os.readlink(task / "ns" / "net") for task in (proc / "task").iterdir()]
            refs += [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(ref.startswith("net:[") and int(ref[5:-1]) in inodes for ref in refs):
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def in_throwaway_home(fn: Callable[[NetNs], T], timeout: float = 30.0) -> T:
    """Run fn(home) on a thread whose home is a fresh namespace: nothing touches the host's."""
    out: list[T] = []
    err: list[BaseException] = []

    def main() -> None:
        home = NetNs.create("home", {}, stay=True)
        try:
            out.append(fn(home))
        except BaseException as exc:
            err.append(exc)
        finally:
            home.close()
            native.close_home_netns_fd()

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} still running after {timeout:g} s"
    if err:
        raise err[0]
    return out[0]


async def tcp_echo_server(handle: pb.Device, port: int, ready: anyio.Event | None = None) -> None:
    """Serve one connection: echo until EOF."""
    listener = await anyio.create_tcp_listener(local_host=str(handle.ip), local_port=port)
    async with listener:
        conn = await listener.listeners[0].accept()
        async with conn:
            while True:
                try:
                    data = await conn.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                await conn.send(data)


async def serve_tcp_echo(_: pb.Device, host: str, port: int) -> None:
    """Run inside a node (`node.spawn(serve_tcp_echo, host, port)`): echo every connection."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            async for chunk in stream:
                await stream.send(chunk)

    async with listener:
        await listener.serve(echo)
