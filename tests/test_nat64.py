"""NAT64 in labs: IPv6-only phones reach IPv4-only servers through their carrier's translator."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import anyio
import pytest

import patchbay_core as pb
from tests.helpers import netns_inodes_of_process
from tests.natkit import wait_for

pytestmark = pytest.mark.anyio


async def carrier_lab(lab: pb.Lab, phones: int = 1, **timeouts: int) -> tuple[pb.Router, pb.Device, list[pb.Device]]:
    dc = await lab.add_router("dc").build()  # IPv4-only
    builder = lab.add_router("carrier").preset(pb.RouterPreset.ISP_V6)
    if timeouts:
        builder.nat64_timeouts(**timeouts)
    carrier = await builder.build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    devices = [await lab.add_device(f"phone{i}").iface("eth0", carrier).build() for i in range(phones)]
    return carrier, server, devices


async def udp_echo_server(server: pb.Device, port: int, ready: threading.Event) -> None:
    async def run(_: pb.Device) -> None:
        sock = await anyio.create_udp_socket(local_host=str(server.ip), local_port=port)
        async with sock:
            ready.set()
            async for data, (host, p) in sock:
                await sock.sendto(data + f" from {host}:{p}".encode(), host, p)

    await server.spawn(run)


async def udp_via_nat64(phone: pb.Device, server: pb.Device, port: int, sport: int = 0) -> str:
    target = str(pb.nat64.embed_v4(server.ip))  # type: ignore[arg-type]

    async def run(_: pb.Device) -> str:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            if sport:
                s.bind(("::", sport))
            s.settimeout(0.3)
            for _ in range(10):
                s.sendto(b"hello", (target, port))
                try:
                    return s.recv(200).decode()
                except TimeoutError:
                    continue
        raise AssertionError("no echo through NAT64")

    return await phone.spawn(run)


async def test_a_v6_only_phone_reaches_a_v4_only_server(lab: pb.Lab) -> None:
    carrier, server, [phone] = await carrier_lab(lab)
    assert phone.ip is None and phone.ip6 is not None and server.ip6 is None
    target = pb.nat64.embed_v4(server.ip)  # type: ignore[arg-type]
    assert target == pb.nat64.embed_v4(str(server.ip)) and str(target).startswith("64:ff9b::")
    # ping through NAT64 (ICMPv6 echo <-> ICMP echo)
    assert (await phone.ping(target, count=3, interval=0.05)).received == 3
    ready = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(udp_echo_server, server, 5000, ready)
        await wait_for(ready)
        answer = await udp_via_nat64(phone, server, 5000)
        # The server sees the carrier's NAT64 address, an IPv4 one of the carrier's own.
        assert answer.startswith("hello from 198.18.0.") and str(carrier.uplink_ip) not in answer
        tg.cancel_scope.cancel()
    counters = await carrier.counters()
    assert counters["nat64.translated"] >= 8 and counters["nat64.bindings"] >= 2
    assert {m.proto for m in await carrier.nat_mappings()} >= {"nat64-icmp", "nat64-udp"}


async def test_tcp_through_nat64_carries_a_mebibyte_intact(lab: pb.Lab) -> None:
    _, server, [phone] = await carrier_lab(lab)
    blob = bytes(range(256)) * 4096  # 1 MiB
    ready = threading.Event()
    digests: list[str] = []

    async def sink(_: pb.Device) -> None:
        listener = await anyio.create_tcp_listener(local_host=str(server.ip), local_port=8080)
        async with listener:
            ready.set()
            conn = await listener.listeners[0].accept()
            async with conn:
                got = b""
                while len(got) < len(blob):
                    got += await conn.receive()
                digests.append(hashlib.sha256(got).hexdigest())
                await conn.send(got[::-1][:65536])  # and something back

    async def source(_: pb.Device) -> bytes:
        with anyio.fail_after(10):
            conn = await anyio.connect_tcp(str(pb.nat64.embed_v4(server.ip)), 8080)  # type: ignore[arg-type]
            async with conn:
                await conn.send(blob)
                back = b""
                while len(back) < 65536:
                    back += await conn.receive()
                return back

    async with anyio.create_task_group() as tg:
        tg.start_soon(server.spawn, sink)
        await wait_for(ready)
        back = await phone.spawn(source)
    assert digests == [hashlib.sha256(blob).hexdigest()] and back == blob[::-1][:65536]


async def test_an_icmp_error_comes_back_as_icmpv6(lab: pb.Lab) -> None:
    _, server, [phone] = await carrier_lab(lab)
    target = str(pb.nat64.embed_v4(server.ip))  # type: ignore[arg-type]

    def probe() -> str:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))  # nothing listens: the server answers ICMP port unreachable
            s.settimeout(0.5)
            for _ in range(4):
                s.send(b"?")
                try:
                    s.recv(10)
                except ConnectionRefusedError:
                    return "refused"  # an ICMPv6 destination unreachable (port) arrived
                except TimeoutError:
                    continue
        return "silent"

    assert phone.run_sync(probe) == "refused"


async def test_two_phones_on_one_source_port_both_work(lab: pb.Lab) -> None:
    carrier, server, phones = await carrier_lab(lab, phones=2)
    ready = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(udp_echo_server, server, 5000, ready)
        await wait_for(ready)
        answers = [await udp_via_nat64(p, server, 5000, sport=40000) for p in phones]
        answers += [await udp_via_nat64(p, server, 5000, sport=40000) for p in phones]  # and again
        tg.cancel_scope.cancel()
    seen = [a.rsplit(":", 1) for a in answers]
    assert seen[0] == seen[2] and seen[1] == seen[3]  # each keeps its binding
    assert seen[0][1] != seen[1][1]  # no collision: the second got a port of its own
    bindings = [m for m in await carrier.nat_mappings() if m.proto == "nat64-udp"]
    assert sorted(str(m.internal[0]) for m in bindings) == sorted(str(p.ip6) for p in phones)


async def test_bindings_expire_after_their_timeout(lab: pb.Lab) -> None:
    carrier, server, [phone] = await carrier_lab(lab, udp=2)
    ready = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(udp_echo_server, server, 5000, ready)
        await wait_for(ready)
        await udp_via_nat64(phone, server, 5000, sport=41000)
        assert [m for m in await carrier.nat_mappings() if m.proto == "nat64-udp"]
        started = time.monotonic()
        while [m for m in await carrier.nat_mappings() if m.proto == "nat64-udp"]:
            assert time.monotonic() - started < 5, "the binding outlived its 2 s"
            await anyio.sleep(0.2)
        assert time.monotonic() - started >= 1.0
        tg.cancel_scope.cancel()
    assert (await carrier.counters())["nat64.bindings.expired"] >= 1


async def test_dual_stack_router_with_nat64_and_the_carrier_firewall(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    dual = await lab.add_router("dual").ip_support(pb.IpSupport.DUAL_STACK).nat_v6(pb.NatV6Mode.NAT64).build()
    carrier = await lab.add_router("carrier").preset(pb.RouterPreset.ISP_V6).build()
    v6dc = await lab.add_router("v6dc").preset(pb.RouterPreset.PUBLIC).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    laptop = await lab.add_device("laptop").iface("eth0", dual).build()
    phone = await lab.add_device("phone").iface("eth0", carrier).build()
    outsider = await lab.add_device("outsider").iface("eth0", v6dc).build()
    assert (await laptop.ping(pb.nat64.embed_v4(server.ip))).received == 1  # type: ignore[arg-type]
    assert (await laptop.ping(server.ip)).received == 1  # and native IPv4 alongside
    # ISP_V6 blocks unsolicited inbound: the phone's public address is not reachable from outside.
    assert (await outsider.ping(phone.ip6, timeout=0.3)).received == 0
    assert (await phone.ping(outsider.ip6)).received == 1


async def test_nat64_bad_input(lab: pb.Lab) -> None:
    v6 = await lab.add_router("v6").ip_support(pb.IpSupport.V6_ONLY).build()
    with pytest.raises(pb.TopologyError, match="NAT64 needs an IPv4 uplink"):
        await lab.add_router("x").ip_support(pb.IpSupport.V6_ONLY).nat_v6(pb.NatV6Mode.NAT64).upstream(v6).build()
    with pytest.raises(pb.TopologyError, match="nat64_timeouts"):
        await lab.add_router("y").preset(pb.RouterPreset.ISP_V6).nat64_timeouts(udp=0).build()
    assert [r.name for r in lab.routers()] == ["v6"]


def _translator_threads() -> int:
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == "pb-nat64"
        except OSError:
            continue
    return count


async def test_closing_the_lab_ends_the_translator_and_its_namespace() -> None:
    before = _translator_threads()
    async with pb.Lab() as lab:
        carrier, server, [phone] = await carrier_lab(lab)
        assert _translator_threads() == before + 1
        inode = carrier._state.ns.inode  # type: ignore[union-attr]
        assert (await phone.ping(pb.nat64.embed_v4(server.ip))).received == 1  # type: ignore[arg-type]
        await lab.remove_device(phone)
        await lab.remove_router(carrier)  # removing the router ends its translator too
        assert _translator_threads() == before
        assert inode not in netns_inodes_of_process()
    assert _translator_threads() == before
