"""Helpers shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.abc

import patchbay_core as pb


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
