"""Real packets through real namespaces: who reaches whom."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network

import anyio
import pytest

import patchbay_core as pb

pytestmark = pytest.mark.anyio


async def test_routers_ping_each_other_across_the_ix(lab: pb.Lab) -> None:
    a = await lab.add_router("a").build()
    b = await lab.add_router("b").build()
    assert a.uplink_ip in IPv4Network("198.18.0.0/24") and b.uplink_ip in IPv4Network("198.18.0.0/24")
    result = await a.ping(b.uplink_ip, count=2)
    assert result.received == 2
    assert (await b.ping(lab.ix.gateway_ip)).received == 1


async def test_device_behind_a_chained_router_reaches_a_server_on_another_router(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    isp = await lab.add_router("isp").build()
    home = await lab.add_router("home").upstream(isp).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    laptop = await lab.add_device("laptop").iface("eth0", home).build()
    assert home.uplink_ip in isp.downstream_cidr
    assert laptop.ip in home.downstream_cidr
    assert (await laptop.ping(server.ip)).received == 1
    # And back: the server reaches the laptop (no NAT anywhere: routes all the way down).
    assert (await server.ping(laptop.ip)).received == 1


async def test_two_devices_on_one_router_share_a_segment(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    a = await lab.add_device("a").iface("eth0", r).build()
    b = await lab.add_device("b").iface("eth0", r).build()
    assert (await a.ping(b.ip)).received == 1

    # A broadcast from one reaches the other: an L2 segment, not just routing.
    port = 40123

    async def listen(_: pb.Device) -> tuple[bytes, str]:
        sock = await anyio.create_udp_socket(local_host="0.0.0.0", local_port=port)
        async with sock:
            data, (host, _p) = await sock.receive()
            return data, host

    async def shout(_: pb.Device) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        with raw:
            for _ in range(20):
                raw.sendto(b"hello-lan", (str(r.downstream_cidr.broadcast_address), port))
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        received: list[tuple[bytes, str]] = []

        async def collect() -> None:
            received.append(await b.spawn(listen))

        tg.start_soon(collect)
        await anyio.sleep(0.1)
        with anyio.fail_after(5):
            await a.spawn(shout)
    assert received == [(b"hello-lan", str(a.ip))]


async def test_a_multi_homed_device_sends_from_its_default_interface(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    wifi = await lab.add_router("wifi").build()
    cell = await lab.add_router("cell").build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    phone = await lab.add_device("phone").iface("wlan0", wifi).iface("cell0", cell).default_via("cell0").build()
    assert phone.default_iface().name == "cell0"
    assert phone.ip == phone.iface("cell0").ip
    assert phone.iface("wlan0").router == wifi
    seen: list[str] = []

    async def whoami_server(_: pb.Device) -> None:
        sock = await anyio.create_udp_socket(local_host=str(server.ip), local_port=7000)
        async with sock:
            _data, (host, port) = await sock.receive()
            seen.append(host)
            await sock.sendto(host.encode(), host, port)

    async def probe(_: pb.Device) -> str:
        sock = await anyio.create_udp_socket(family=socket.AF_INET)
        async with sock:
            for _ in range(30):
                await sock.sendto(b"who am i", str(server.ip), 7000)
                with anyio.move_on_after(0.2):
                    data, _addr = await sock.receive()
                    return data.decode()
        raise AssertionError("no answer")

    async with anyio.create_task_group() as tg:
        tg.start_soon(server.spawn, whoami_server)
        answer = await phone.spawn(probe)
    # The kernel picks the source address of the default route's interface.
    assert answer == str(phone.iface("cell0").ip) == seen[0]


async def test_addresses_are_unique_and_inside_their_pools(lab: pb.Lab) -> None:
    routers = [await lab.add_router(f"r{i}").build() for i in range(6)]
    routers.append(await lab.add_router("chained").upstream(routers[0]).build())
    devices = []
    for i, router in enumerate(routers):
        for j in range(3):
            devices.append(await lab.add_device(f"d{i}-{j}").iface("eth0", router).build())
    seen: set[IPv4Address] = set()
    for router in routers:
        for iface in router.interfaces():
            assert iface.ip not in seen, iface
            seen.add(iface.ip)
    for device in devices:
        assert device.ip not in seen
        assert device.ip in device.default_iface().router.downstream_cidr
        seen.add(device.ip)
    cidrs = [r.downstream_cidr for r in routers]
    assert len(set(cidrs)) == len(cidrs)
    assert all(not a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1 :])


async def test_downstream_cidr_override_and_private_pool(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    custom = await lab.add_router("custom").downstream_cidr("10.77.0.0/24").build()
    private = await lab.add_router("priv").pool(pb.Pool.PRIVATE).build()
    assert custom.downstream_cidr == IPv4Network("10.77.0.0/24")
    assert private.downstream_cidr == IPv4Network("10.0.1.0/24")
    assert dc.downstream_cidr == IPv4Network("198.18.1.0/24")
    dev = await lab.add_device("dev").iface("eth0", custom).build()
    assert dev.ip == IPv4Address("10.77.0.2")
    server = await lab.add_device("server").iface("eth0", dc).build()
    assert (await dev.ping(server.ip)).received == 1


async def test_router_presets_from_the_builtin_plugin(lab: pb.Lab) -> None:
    public = await lab.add_router("pub").preset(pb.RouterPreset.PUBLIC_V4).build()
    assert public.downstream_cidr.subnet_of(IPv4Network("198.18.0.0/15"))
    # Methods called after .preset() override it.
    private = await lab.add_router("pub-priv").preset("public").pool(pb.Pool.PRIVATE).build()
    assert private.downstream_cidr.subnet_of(IPv4Network("10.0.0.0/8"))


async def test_isolated_router_keeps_its_devices_to_themselves(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    portal = await lab.add_router("portal").isolated().build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    a = await lab.add_device("a").iface("eth0", portal).build()
    b = await lab.add_device("b").iface("eth0", portal).build()
    assert portal.uplink_ip is None
    assert (await a.ping(b.ip)).received == 1
    assert (await a.ping(server.ip, timeout=0.5)).received == 0


async def test_mtu_is_applied_to_device_interfaces(lab: pb.Lab) -> None:
    vpn = await lab.add_router("vpn").mtu(1420).build()
    dev = await lab.add_device("dev").iface("eth0", vpn).build()
    small = await lab.add_device("small").iface("eth0", vpn).mtu(1280).build()

    def mtu_of(name: str) -> int:
        import fcntl
        import struct

        with socket.socket() as s:
            req = struct.pack("16sI", name.encode(), 0)
            return struct.unpack("16sI", fcntl.ioctl(s, 0x8921, req))[1]  # SIOCGIFMTU

    assert dev.run_sync(mtu_of, "eth0") == 1420
    assert small.run_sync(mtu_of, "eth0") == 1280
    assert vpn.run_sync(mtu_of, "lan") == 1420
