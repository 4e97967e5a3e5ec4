"""`patchbay demo`: a small lab, a UDP and a TCP exchange, and a short report.

A datacenter server and a laptop behind a home NAT router that hangs off an ISP router.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import anyio
import anyio.abc

from .handles import Device
from .lab import Lab
from .opts import LabOpts
from .routers import RouterPreset

UDP_PORT, TCP_PORT = 7000, 8000
UDP_PROBES = 20
TCP_BYTES = 32 * 1024 * 1024


async def _udp_rtts(laptop: Device, server: Device) -> list[float]:
    async def probe(_: Device) -> list[float]:
        rtts = []
        sock = await anyio.create_udp_socket(family=socket.AF_INET)
        async with sock:
            for i in range(UDP_PROBES):
                started = time.perf_counter()
                await sock.sendto(b"probe-%d" % i, str(server.ip), UDP_PORT)
                with anyio.fail_after(2):
                    data, _ = await sock.receive()
                assert data == b"probe-%d" % i
                rtts.append((time.perf_counter() - started) * 1000)
        return rtts

    return await laptop.spawn(probe)


async def _tcp_transfer(laptop: Device, server: Device) -> tuple[int, float, str]:
    async def serve(_: Device) -> tuple[int, str]:
        listener = await anyio.create_tcp_listener(local_host=str(server.ip), local_port=TCP_PORT)
        async with listener:
            conn = await listener.listeners[0].accept()
            peer = conn.extra(anyio.abc.SocketAttribute.remote_address)
            received = 0
            async with conn:
                while received < TCP_BYTES:
                    received += len(await conn.receive())
                await conn.send(b"done")
            return received, f"{peer[0]}:{peer[1]}"

    async def upload(_: Device) -> float:
        chunk = b"x" * 65536
        started = time.perf_counter()
        conn = await anyio.connect_tcp(str(server.ip), TCP_PORT)
        async with conn:
            for _ in range(TCP_BYTES // len(chunk)):
                await conn.send(chunk)
            assert await conn.receive() == b"done"
        return time.perf_counter() - started

    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        async def run_server() -> None:
            result["received"], result["peer"] = await server.spawn(serve)

        tg.start_soon(run_server)
        await anyio.sleep(0.1)
        result["seconds"] = await laptop.spawn(upload)
    return result["received"], result["seconds"], result["peer"]


async def run_demo(outdir: str | None = None) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    started = time.perf_counter()
    async with Lab(LabOpts(label="demo", outdir=outdir)) as lab:
        say("building: dc router + server, isp router, home NAT router behind it + laptop")
        dc = await lab.add_router("dc").build()
        isp = await lab.add_router("isp").build()
        home = await lab.add_router("home").preset(RouterPreset.HOME).upstream(isp).build()
        server = await lab.add_device("server").iface("eth0", dc).build()
        laptop = await lab.add_device("laptop").iface("eth0", home).build()
        built = time.perf_counter() - started
        say(f"  built 3 routers and 2 devices in {built * 1000:.0f} ms")

        ping = await laptop.ping(server.ip, count=3)
        say(f"ping laptop -> server: {ping.received}/{ping.sent} replies")
        reflector = await server.spawn_reflector((server.ip, UDP_PORT))
        rtts = await _udp_rtts(laptop, server)
        await reflector.close()
        say(f"udp: {len(rtts)} datagrams echoed")
        received, seconds, seen_as = await _tcp_transfer(laptop, server)
        say(f"tcp: {received / 1e6:.1f} MB uploaded")

        print()
        print("patchbay demo report")
        print(f"  server  {server.ip} (behind dc, uplink {dc.uplink_ip})")
        print(f"  laptop  {laptop.ip} (behind home NAT {home.uplink_ip}, behind isp {isp.uplink_ip})")
        print(f"  nat     the server saw the laptop as {seen_as}")
        print(f"  ping    {ping.received}/{ping.sent}, rtt {min(ping.rtts_ms, default=0):.2f} ms")
        print(f"  udp     {len(rtts)}/{UDP_PROBES} echoed, rtt median {sorted(rtts)[len(rtts) // 2]:.3f} ms")
        print(f"  tcp     {received / 1e6:.1f} MB in {seconds:.2f} s = {received * 8 / seconds / 1e9:.2f} Gbit/s")
        if lab.outdir:
            print(f"  events  {lab.outdir}/events.jsonl")
        ok = (ping.received == ping.sent and len(rtts) == UDP_PROBES and received == TCP_BYTES
              and seen_as.startswith(f"{home.uplink_ip}:"))
    print(f"  lab built, used and torn down in {time.perf_counter() - started:.2f} s: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
