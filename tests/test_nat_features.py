"""Hairpin, double NAT, isolation, runtime changes, port forwards, firewalls, diagnostics."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import anyio
import pytest

import patchbay_core as pb
from tests.natkit import WHOAMI_PORT, listen_udp, send_udp, tcp_reflexive, udp_reflexive, wait_for, whoami

pytestmark = pytest.mark.anyio


async def public_server(lab: pb.Lab, name: str = "srv") -> pb.Device:
    dc = await lab.add_router(f"dc-{name}").build()
    return await lab.add_device(name).iface("eth0", dc).build()


async def inbound_arrives(target_dev: pb.Device, local_port: int, sender: pb.Device, to: tuple[str, int],
                          payload: bytes = b"knock", from_port: int = 9999) -> bool:
    started = threading.Event()
    got: list[tuple[bytes, tuple[str, int]]] = []
    async with anyio.create_task_group() as tg:
        async def listen() -> None:
            got.extend(await listen_udp(target_dev, local_port, 0.6, started))

        tg.start_soon(listen)
        await wait_for(started)
        await send_udp(sender, from_port, to, payload)
    return any(data == payload for data, _ in got)


@pytest.mark.parametrize("hairpin", [True, False])
async def test_hairpin(lab: pb.Lab, hairpin: bool) -> None:
    srv = await public_server(lab)
    nat = await lab.add_router("nat").nat(pb.NatConfig(filtering=pb.NatFiltering.ENDPOINT_INDEPENDENT,
                                                        hairpin=hairpin)).build()
    a = await lab.add_device("a").iface("eth0", nat).build()
    b = await lab.add_device("b").iface("eth0", nat).build()
    async with whoami(srv):
        (b_public,) = await udp_reflexive(b, 6000, [(str(srv.ip), WHOAMI_PORT)])
        (a_public,) = await udp_reflexive(a, 6001, [(str(srv.ip), WHOAMI_PORT)])
    started = threading.Event()
    got: list[tuple[bytes, tuple[str, int]]] = []
    async with anyio.create_task_group() as tg:
        async def listen() -> None:
            got.extend(await listen_udp(b, 6000, 0.6, started))

        tg.start_soon(listen)
        await wait_for(started)
        await send_udp(a, 6001, b_public, b"via-the-nat")
    if hairpin:
        # b sees the packet come from a's public mapping, as if from outside.
        assert got and got[0] == (b"via-the-nat", a_public)
    else:
        assert got == []


async def test_double_nat_and_isolation_of_private_lans(lab: pb.Lab) -> None:
    srv = await public_server(lab)
    carrier = await lab.add_router("carrier").preset(pb.RouterPreset.ISP_CGNAT).build()
    home1 = await lab.add_router("home1").nat(pb.Nat.HOME).upstream(carrier).build()
    home2 = await lab.add_router("home2").nat(pb.Nat.HOME).build()
    d1 = await lab.add_device("d1").iface("eth0", home1).build()
    d2 = await lab.add_device("d2").iface("eth0", home2).build()
    assert str(home1.uplink_ip).startswith("100.64.") and str(d1.ip).startswith("10.0.")
    async with whoami(srv):
        (seen1,) = await udp_reflexive(d1, 5000, [(str(srv.ip), WHOAMI_PORT)])
        (seen2,) = await tcp_reflexive(d2, 5000, [(str(srv.ip), WHOAMI_PORT)])
    assert seen1[0] == str(carrier.uplink_ip) and seen2[0] == str(home2.uplink_ip)
    # Private LANs do not reach each other, nor the carrier's customers behind other homes.
    assert (await d1.ping(d2.ip, timeout=0.3)).received == 0
    assert (await d2.ping(d1.ip, timeout=0.3)).received == 0
    assert (await d2.ping(home1.uplink_ip, timeout=0.3)).received == 0
    assert (await d1.ping(srv.ip)).received == 1


async def test_runtime_nat_change_and_flush(lab: pb.Lab) -> None:
    srv = await public_server(lab)
    srv2 = await lab.add_device("srv2").iface("eth0", lab.router("dc-srv")).build()
    nat = await lab.add_router("nat").nat(pb.Nat.HOME).build()
    dev = await lab.add_device("dev").iface("eth0", nat).build()
    targets = [(str(srv.ip), WHOAMI_PORT), (str(srv2.ip), WHOAMI_PORT)]
    async with whoami(srv, srv2):
        home = await udp_reflexive(dev, 7000, targets)
        assert home[0] == home[1]  # stable port
        await nat.set_nat_mode(pb.Nat.CORPORATE)
        corporate = await udp_reflexive(dev, 7001, targets)
        assert corporate[0][1] != corporate[1][1]  # a port per destination now
        await nat.set_nat_mode("full-cone")
        await nat.flush_nat_state()
        assert await nat.nat_mappings() == []
        full = await udp_reflexive(dev, 7002, targets)
        assert full[0] == full[1]
    # Full cone: anyone reaches the mapping; after a flush the mapping is gone.
    assert await inbound_arrives(dev, 7002, srv2, full[0])
    await nat.flush_nat_state()
    assert not await inbound_arrives(dev, 7002, srv2, full[0])
    # And the next flow gets a new mapping: another host took the old port meanwhile.
    rival = await lab.add_device("rival").iface("eth0", nat).build()
    async with whoami(srv):
        (rival_seen,) = await udp_reflexive(rival, 7002, targets[:1])
        (again,) = await udp_reflexive(dev, 7002, targets[:1])
    assert rival_seen == full[0] and again[1] != full[0][1]


async def test_no_host_steals_another_hosts_inbound_on_a_shared_local_port(lab: pb.Lab) -> None:
    """Endpoint-independent mappings of two hosts using one local port: unsolicited inbound
    to each mapping reaches its own host only."""
    srv = await public_server(lab)
    stranger = await public_server(lab, "stranger")
    nat = await lab.add_router("nat").nat(pb.Nat.FULL_CONE).build()
    a = await lab.add_device("a").iface("eth0", nat).build()
    b = await lab.add_device("b").iface("eth0", nat).build()
    async with whoami(srv):
        (a_public,) = await udp_reflexive(a, 40000, [(str(srv.ip), WHOAMI_PORT)])
        (b_public,) = await udp_reflexive(b, 40000, [(str(srv.ip), WHOAMI_PORT)])
    assert a_public != b_public
    for target, other, public in ((a, b, a_public), (b, a, b_public)):
        started = threading.Event()
        got: dict[str, list[bytes]] = {}

        async def listen(dev: pb.Device, got: dict[str, list[bytes]] = got,
                         started: threading.Event = started) -> None:
            got[dev.name] = [data for data, _ in await listen_udp(dev, 40000, 0.6, started)]

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, target)
            tg.start_soon(listen, other)
            await wait_for(started)
            await anyio.sleep(0.05)
            await send_udp(stranger, 9999, public, f"for-{target.name}".encode())
        assert got[target.name] and set(got[target.name]) == {f"for-{target.name}".encode()}
        assert got[other.name] == []


async def test_forwarded_ports_are_never_handed_out_as_mappings(lab: pb.Lab) -> None:
    srv = await public_server(lab)
    nat = await lab.add_router("nat").nat(pb.Nat.FULL_CONE).port_forward("udp", 44000, "game").build()
    other = await lab.add_device("other").iface("eth0", nat).build()
    async with whoami(srv):
        # The forward's device does not exist yet: its port is still reserved.
        (seen,) = await udp_reflexive(other, 44000, [(str(srv.ip), WHOAMI_PORT)])
        assert seen[1] != 44000
        game = await lab.add_device("game").iface("eth0", nat).build()
        await nat.add_port_forward("udp", 45000, game)  # at runtime too
        (seen,) = await udp_reflexive(other, 45000, [(str(srv.ip), WHOAMI_PORT)])
        assert seen[1] != 45000
        await nat.remove_port_forward("udp", 45000)  # and released again: a new host gets it
        third = await lab.add_device("third").iface("eth0", nat).build()
        (seen,) = await udp_reflexive(third, 45000, [(str(srv.ip), WHOAMI_PORT)])
        assert seen[1] == 45000
    assert await inbound_arrives(game, 44000, srv, (str(nat.uplink_ip), 44000))


async def test_port_forwards_reach_the_device_whatever_the_filtering(lab: pb.Lab) -> None:
    outside = await public_server(lab, "outside")
    nat = await lab.add_router("nat").nat(pb.Nat.CORPORATE).port_forward("udp", 5353, "game", 9000).build()
    game = await lab.add_device("game").iface("eth0", nat).build()
    other = await lab.add_device("other").iface("eth0", nat).build()
    wan = str(nat.uplink_ip)
    assert await inbound_arrives(game, 9000, outside, (wan, 5353))
    await nat.add_port_forward("udp", 6000, other)
    assert await inbound_arrives(other, 6000, outside, (wan, 6000))
    assert (await nat.counters())["portfwd.forwarded"] >= 2
    await nat.remove_port_forward("udp", 6000)
    # New flows no longer pass (a flow already running lives on until it idles out, as in a
    # router's session table).
    assert not await inbound_arrives(other, 6000, outside, (wan, 6000), from_port=9998)
    with pytest.raises(pb.TopologyError, match="already forwarded"):
        await nat.add_port_forward("udp", 5353, other)
    with pytest.raises(pb.TopologyError, match="no forward of tcp port 1"):
        await nat.remove_port_forward("tcp", 1)
    with pytest.raises(pb.TopologyError, match="has no interface on this router"):
        await nat.add_port_forward("tcp", 80, outside)


async def _tcp_ok(dev: pb.Device, host: str, port: int) -> bool:
    async def run(_: pb.Device) -> bool:
        try:
            with anyio.fail_after(0.5):
                stream = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError):
            return False
        await stream.aclose()
        return True

    return await dev.spawn(run)


async def _udp_ok(dev: pb.Device, host: str, port: int) -> bool:
    async def run(_: pb.Device) -> bool:
        sock = await anyio.create_udp_socket(family=socket.AF_INET)
        async with sock:
            for _ in range(3):
                await sock.sendto(b"?", host, port)
                with anyio.move_on_after(0.2):
                    await sock.receive()
                    return True
        return False

    return await dev.spawn(run)


def _udp_refused(dev: pb.Device, host: str, port: int) -> bool:
    """A datagram to a closed port: the ICMP port-unreachable comes back (ECONNREFUSED)."""

    def run() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            sock.settimeout(0.5)
            for _ in range(3):
                sock.send(b"?")
                try:
                    sock.recv(100)
                except ConnectionRefusedError:
                    return True
                except TimeoutError:
                    continue
        return False

    return dev.run_sync(run)


async def _servers(srv: pb.Device, ports: list[int]) -> None:
    async def tcp(_: pb.Device, port: int) -> None:
        listener = await anyio.create_tcp_listener(local_host=str(srv.ip), local_port=port)
        async with listener:
            await listener.serve(lambda s: s.aclose())

    async def udp(_: pb.Device, port: int) -> None:
        sock = await anyio.create_udp_socket(local_host=str(srv.ip), local_port=port)
        async with sock:
            async for data, (host, p) in sock:
                await sock.sendto(data, host, p)

    async with anyio.create_task_group() as tg:
        for port in ports:
            tg.start_soon(srv.spawn, tcp, port)
            tg.start_soon(srv.spawn, udp, port)


async def test_firewall_presets_allow_exactly_their_ports(lab: pb.Lab) -> None:
    srv = await public_server(lab)
    ports = [22, 53, 80, 443, 3478]
    corp = await lab.add_router("corp").preset(pb.RouterPreset.CORPORATE).build()
    hotel = await lab.add_router("hotel").preset(pb.RouterPreset.HOTEL).build()
    office = await lab.add_device("office").iface("eth0", corp).build()
    guest = await lab.add_device("guest").iface("eth0", hotel).build()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_servers, srv, ports)
        await anyio.sleep(0.2)
        host = str(srv.ip)
        corp_tcp = {p for p in ports if await _tcp_ok(office, host, p)}
        corp_udp = {p for p in ports if await _udp_ok(office, host, p)}
        hotel_tcp = {p for p in ports if await _tcp_ok(guest, host, p)}
        hotel_udp = {p for p in ports if await _udp_ok(guest, host, p)}
        assert (corp_tcp, corp_udp) == ({80, 443}, {53})
        assert (hotel_tcp, hotel_udp) == (set(ports), {53})
        # ICMP keeps flowing: echo, and errors (a closed UDP port answers "port unreachable").
        assert (await office.ping(srv.ip)).received == 1
        quiet = await lab.add_device("quiet").iface("eth0", lab.router("dc-srv")).build()  # nothing listens
        assert _udp_refused(office, str(quiet.ip), 53)
        # Presets swapped at runtime block and allow exactly their ports too.
        await corp.set_firewall(pb.Firewall.CAPTIVE_PORTAL)
        assert {p for p in ports if await _tcp_ok(office, host, p)} == set(ports)
        assert {p for p in ports if await _udp_ok(office, host, p)} == {53}
        await hotel.set_firewall(pb.Firewall.CORPORATE)
        assert {p for p in ports if await _tcp_ok(guest, host, p)} == {80, 443}
        assert {p for p in ports if await _udp_ok(guest, host, p)} == {53}
        await corp.set_firewall(pb.FirewallConfig.builder().allow_udp_ports([3478]).build())
        assert {p for p in ports if await _udp_ok(office, host, p)} == {3478}
        assert {p for p in ports if await _tcp_ok(office, host, p)} == set(ports)
        await corp.set_firewall(pb.Firewall.NONE)
        assert {p for p in ports if await _udp_ok(office, host, p)} == set(ports)
        tg.cancel_scope.cancel()
    counters = await hotel.counters()
    assert counters["firewall.outbound_udp_blocked"] > 0


async def test_block_inbound_protects_public_devices(lab: pb.Lab) -> None:
    outside = await public_server(lab, "outside")
    dc = await lab.add_router("dc").firewall(pb.Firewall.BLOCK_INBOUND).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    assert (await outside.ping(server.ip, timeout=0.3)).received == 0
    assert (await server.ping(outside.ip)).received == 1  # replies to its own traffic come in
    await dc.set_firewall("none")
    assert (await outside.ping(server.ip)).received == 1


async def test_diagnostics(lab: pb.Lab, tmp_path: Path) -> None:
    srv = await public_server(lab)
    nat = await lab.add_router("nat").preset("home").build()
    dev = await lab.add_device("dev").iface("eth0", nat).build()
    async with whoami(srv):
        (mapped,) = await udp_reflexive(dev, 4444, [(str(srv.ip), WHOAMI_PORT)])
    mappings = await nat.nat_mappings()
    udp = [m for m in mappings if m.proto == "udp"]
    assert len(udp) == 1
    assert udp[0].internal == (dev.ip, 4444) and udp[0].external == (nat.uplink_ip, mapped[1])
    assert udp[0].remote == (srv.ip, WHOAMI_PORT) and 0 < udp[0].expires_s <= 300
    counters = await nat.counters()
    assert counters["nat.mapping_preserved"] == 1
    await lab.dump_diagnostics(tmp_path)
    report = (tmp_path / "router.nat.txt").read_text()
    assert "table ip pb_nat" in report and "table inet pb_fw" in report
    assert f"{dev.ip}:4444 -> {srv.ip}:{WHOAMI_PORT}" in report  # the conntrack entry
    assert "counter packets" in report and "default via" in report
    assert (tmp_path / "device.dev.txt").exists() and (tmp_path / "ix.ix.txt").exists()
