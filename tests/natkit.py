"""Helpers for NAT tests: code that runs inside lab nodes and reports what it saw."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

import patchbay_core as pb

WHOAMI_PORT = 3478
Addr = tuple[str, int]


async def _udp_whoami(_: pb.Device, host: str, port: int) -> None:
    sock = await anyio.create_udp_socket(local_host=host, local_port=port)
    async with sock:
        while True:
            _data, (peer, peer_port) = await sock.receive()
            await sock.sendto(f"{peer}:{peer_port}".encode(), peer, peer_port)


async def _tcp_whoami(_: pb.Device, host: str, port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            peer, peer_port = stream.extra(anyio.abc.SocketAttribute.remote_address)[:2]
            await stream.send(f"{peer}:{peer_port}".encode())

    async with listener:
        await listener.serve(answer)


@asynccontextmanager
async def whoami(*servers: pb.Device, ports: tuple[int, ...] = (WHOAMI_PORT,)) -> AsyncIterator[None]:
    """UDP and TCP servers that answer every probe with the address they saw it come from."""
    async with anyio.create_task_group() as tg:
        for server in servers:
            for port in ports:
                tg.start_soon(server.spawn, _udp_whoami, str(server.ip), port)
                tg.start_soon(server.spawn, _tcp_whoami, str(server.ip), port)
        await anyio.sleep(0.2)
        yield
        tg.cancel_scope.cancel()


def _parse(text: bytes) -> Addr:
    host, port = text.decode().rsplit(":", 1)
    return host, int(port)


async def udp_reflexive(device: pb.Device, local_port: int, targets: list[Addr]) -> list[Addr]:
    """From one local port, ask each whoami server where the datagram came from."""

    async def run(_: pb.Device) -> list[Addr]:
        sock = await anyio.create_udp_socket(family=socket.AF_INET, local_port=local_port)
        seen = []
        async with sock:
            for host, port in targets:
                for _attempt in range(20):
                    await sock.sendto(b"who", host, port)
                    with anyio.move_on_after(0.25):
                        data, _ = await sock.receive()
                        seen.append(_parse(data))
                        break
                else:
                    raise AssertionError(f"{device.name}: no answer from {host}:{port}")
        return seen

    return await device.spawn(run)


async def tcp_reflexive(device: pb.Device, local_port: int, targets: list[Addr]) -> list[Addr]:
    """From one local port (SO_REUSEADDR, one connection after the other), ask each server."""

    async def run(_: pb.Device) -> list[Addr]:
        loop = asyncio.get_running_loop()  # node code runs on the node's asyncio loop
        seen = []
        for host, port in targets:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", local_port))
                sock.setblocking(False)
                with anyio.fail_after(5):
                    await loop.sock_connect(sock, (host, port))
                    seen.append(_parse(await loop.sock_recv(sock, 100)))
        return seen

    return await device.spawn(run)


async def wait_for(flag: threading.Event, timeout: float = 5.0) -> None:
    """Wait, without blocking the loop, for a flag set on another node's thread."""
    with anyio.fail_after(timeout):
        while not flag.is_set():
            await anyio.sleep(0.01)


async def listen_udp(device: pb.Device, local_port: int, seconds: float, started: threading.Event,
                     send_first: Addr | None = None) -> list[tuple[bytes, Addr]]:
    """Bind `local_port`, optionally send one datagram to `send_first`, then collect what comes in."""

    async def run(_: pb.Device) -> list[tuple[bytes, Addr]]:
        sock = await anyio.create_udp_socket(family=socket.AF_INET, local_port=local_port)
        got = []
        async with sock:
            if send_first:
                await sock.sendto(b"hello", *send_first)
            started.set()
            with anyio.move_on_after(seconds):
                while True:
                    data, addr = await sock.receive()
                    got.append((data, (addr[0], addr[1])))
        return got

    return await device.spawn(run)


async def send_udp(device: pb.Device, local_port: int, target: Addr, payload: bytes, times: int = 3) -> None:
    async def run(_: pb.Device) -> None:
        sock = await anyio.create_udp_socket(family=socket.AF_INET, local_port=local_port)
        async with sock:
            for _ in range(times):
                await sock.sendto(payload, *target)
                await anyio.sleep(0.02)

    await device.spawn(run)


async def punch(a: pb.Device, b: pb.Device, port: int, server: Addr, timeout: float = 2.5) -> bool:
    """A simultaneous UDP hole punch through a rendezvous server.

    Each side learns its server-reflexive address, opens its own NAT towards the other's with a
    low-TTL packet that dies one hop past it (so neither side's probes can arrive before both
    holes exist, whichever side is faster), then sends to the other's address until it hears
    from it (from whatever address the packet comes), answers that address a few times, and
    keeps going until both sides heard each other or time is up."""
    # Both sides run on their own nodes' event loops: share plain dicts (no anyio objects).
    learnt: dict[str, Addr] = {}
    opened: dict[str, bool] = {}
    heard: dict[str, bool] = {}

    async def side(me: pb.Device, other: pb.Device) -> None:
        async def run(_: pb.Device) -> bool:
            sock = await anyio.create_udp_socket(family=socket.AF_INET, local_port=port)
            async with sock:
                for _attempt in range(20):
                    await sock.sendto(b"who", *server)
                    with anyio.move_on_after(0.25):
                        data, _ = await sock.receive()
                        learnt[me.name] = _parse(data)
                        break
                with anyio.move_on_after(2):
                    while len(learnt) < 2:
                        await anyio.sleep(0.01)
                target = learnt.get(other.name)
                if target is None:
                    return False
                raw = sock.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 2)  # our NAT, then the IX: no further
                await sock.sendto(b"open", *target)
                await anyio.sleep(0.05)
                raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
                opened[me.name] = True
                with anyio.move_on_after(2):
                    while len(opened) < 2:
                        await anyio.sleep(0.01)
                got = False
                with anyio.move_on_after(timeout):
                    while not (got and heard.get(other.name)):
                        await sock.sendto(b"punch", *target)
                        with anyio.move_on_after(0.05):
                            data, addr = await sock.receive()
                            if data in (b"punch", b"ack"):
                                got = True
                                heard[me.name] = True
                                for _ in range(3):
                                    await sock.sendto(b"ack", addr[0], addr[1])
                                target = (addr[0], addr[1])
                return got

        heard[me.name] = await me.spawn(run) or heard.get(me.name, False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(side, a, b)
        tg.start_soon(side, b, a)
    return heard.get(a.name, False) and heard.get(b.name, False)
