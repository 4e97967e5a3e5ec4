"""IPv6 in labs: dual-stack and IPv6-only networks, GUA and ULA pools, NPTv6, masquerade,
the firewall on IPv6, RA-driven provisioning and duplicate address detection."""

from __future__ import annotations

import json
import socket
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import anyio
import pytest

import patchbay_core as pb
from patchbay_core import nptv6
from tests.helpers import serve_tcp_echo

pytestmark = pytest.mark.anyio

PORT = 7700


async def udp6_reflexive(dev: pb.Device, server: pb.Device, port: int = PORT) -> tuple[str, int]:
    """Ask a UDP echo-the-sender server on `server` where our datagram came from (IPv6)."""

    async def run(_: pb.Device) -> tuple[str, int]:
        sock = await anyio.create_udp_socket(family=socket.AF_INET6)
        async with sock:
            for _ in range(20):
                await sock.sendto(b"who", str(server.ip6), port)
                with anyio.move_on_after(0.25):
                    data, _ = await sock.receive()
                    host, p = data.decode().rsplit(" ", 1)
                    return host, int(p)
        raise AssertionError("no answer over IPv6")

    return await dev.spawn(run)


async def who_server(server: pb.Device, port: int = PORT) -> None:
    async def run(_: pb.Device) -> None:
        sock = await anyio.create_udp_socket(family=socket.AF_INET6, local_host=str(server.ip6), local_port=port)
        async with sock:
            async for _data, (host, p, *_rest) in sock:
                await sock.sendto(f"{host} {p}".encode(), host, p)

    await server.spawn(run)


async def tcp6_echo_ok(dev: pb.Device, host: IPv6Address, port: int) -> bool:
    async def run(_: pb.Device) -> bool:
        with anyio.fail_after(3):
            stream = await anyio.connect_tcp(str(host), port)
            async with stream:
                await stream.send(b"x" * 100_000)
                got = b""
                while len(got) < 100_000:
                    got += await stream.receive()
                return got == b"x" * 100_000

    return await dev.spawn(run)


def has_v4_route(_: object = None) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.18.0.1", 9))
        except OSError:
            return False
        return True


async def test_dual_stack_and_ipv6_only_reach_each_other_over_ipv6(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").ip_support(pb.IpSupport.DUAL_STACK).build()
    v6 = await lab.add_router("v6").ip_support(pb.IpSupport.V6_ONLY).build()
    home = await lab.add_router("home").preset(pb.RouterPreset.HOME).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    phone = await lab.add_device("phone").iface("eth0", v6).build()
    laptop = await lab.add_device("laptop").iface("eth0", home).build()
    # Pools: public ones GUA-like, private ones ULA; the IX is 2001:db8::/64.
    assert server.ip6 in IPv6Network("2001:db8:1::/48") and phone.ip6 in IPv6Network("2001:db8:1::/48")
    assert laptop.ip6 in IPv6Network("fd10::/48") and laptop.ip is not None
    assert dc.uplink_ip6 in IPv6Network("2001:db8::/64") and dc.uplink_ip is not None
    assert phone.ip is None and server.ip is not None
    assert not phone.run_sync(has_v4_route)  # an IPv6-only device has no IPv4 route at all
    iface = phone.default_iface()
    assert iface.ll6 is not None and iface.ll6 in IPv6Network("fe80::/10")
    assert {i.name: i.ll6 for i in v6.interfaces()}["lan"] == IPv6Address("fe80::1")
    assert (await phone.ping(server.ip6)).received == 1
    assert (await server.ping(phone.ip6)).received == 1
    assert (await laptop.ping(server.ip6)).received == 1  # outbound from behind the home firewall
    assert (await laptop.ping(server.ip)).received == 1  # and IPv4 through its NAT
    async with anyio.create_task_group() as tg:
        tg.start_soon(who_server, server)
        tg.start_soon(server.spawn, serve_tcp_echo, str(server.ip6), PORT + 1)
        await anyio.sleep(0.1)
        host, _ = await udp6_reflexive(phone, server)
        assert host == str(phone.ip6)
        assert await tcp6_echo_ok(phone, server.ip6, PORT + 1)  # type: ignore[arg-type]
        host, _ = await udp6_reflexive(laptop, server)
        assert host == str(laptop.ip6)  # no translation: the ULA itself arrives
        tg.cancel_scope.cancel()


async def test_nptv6_maps_the_prefix_and_keeps_the_host_part(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    npt = await lab.add_router("npt").ip_support(pb.IpSupport.DUAL_STACK).nat_v6(pb.NatV6Mode.NPTV6).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", npt).build()
    inside = npt.downstream_cidr6
    outside = npt.npt_prefix6
    assert inside is not None and outside is not None and dev.ip6 in inside
    mapped = IPv6Address(int(outside.network_address) | (int(dev.ip6) & ((1 << 64) - 1)))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(who_server, server)
        await anyio.sleep(0.1)
        host, _ = await udp6_reflexive(dev, server)
        assert IPv6Address(host) == mapped  # the router's prefix, the device's host part
        tg.cancel_scope.cancel()
    assert (await server.ping(mapped)).received == 1  # inbound to the mapped address reaches it
    assert (await server.ping(dev.ip6, timeout=0.3)).received == 0  # its inside address is not routed
    assert (await server.ping(npt.uplink_ip6)).received == 1  # NDP to the router still works
    assert (await npt.counters())["nat6.npt_inbound"] >= 1


async def test_masquerade_hides_devices_behind_the_router_wan_address(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    nat = await lab.add_router("nat").ip_support(pb.IpSupport.DUAL_STACK).nat_v6(pb.NatV6Mode.MASQUERADE).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", nat).build()
    async with anyio.create_task_group() as tg:
        tg.start_soon(who_server, server)
        await anyio.sleep(0.1)
        host, _ = await udp6_reflexive(dev, server)
        assert IPv6Address(host) == nat.uplink_ip6
        tg.cancel_scope.cancel()
    assert (await server.ping(dev.ip6, timeout=0.3)).received == 0


async def test_block_inbound_protects_public_ipv6_devices(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    home = await lab.add_router("home").preset(pb.RouterPreset.PUBLIC).firewall(pb.Firewall.BLOCK_INBOUND).build()
    outside = await lab.add_device("outside").iface("eth0", dc).build()
    inside = await lab.add_device("inside").iface("eth0", home).build()
    assert inside.ip6 in IPv6Network("2001:db8:1::/48")  # public, yet unreachable unsolicited
    assert (await outside.ping(inside.ip6, timeout=0.3)).received == 0
    assert (await inside.ping(outside.ip6)).received == 1  # replies to its own traffic come in
    assert (await outside.ping(home.uplink_ip6)).received == 1  # neighbour discovery unhindered
    await home.set_firewall(pb.Firewall.NONE)
    assert (await outside.ping(inside.ip6)).received == 1


async def test_static_provisioning_uses_global_gateways(lab: pb.Lab) -> None:
    r = await lab.add_router("r").preset(pb.RouterPreset.PUBLIC).build()
    other = await lab.add_router("other").preset(pb.RouterPreset.PUBLIC).build()
    dev = await lab.add_device("dev").iface("eth0", r).iface("eth1", other).build()

    def defaults6() -> list[tuple[object, int]]:
        return [(x.via, x.proto) for x in dev._state.ns.routes()  # type: ignore[union-attr]
                if x.family == socket.AF_INET6 and x.dst == "default"]

    assert defaults6() == [(r.gateway_ip6, 4)]  # RTPROT_STATIC, via the router's global address
    await dev.set_default_route("eth1")
    assert defaults6() == [(other.gateway_ip6, 4)]
    await dev.link_down("eth1")
    assert defaults6() == []
    await dev.link_up("eth1")
    assert defaults6() == [(other.gateway_ip6, 4)]
    assert (await dev.ping(other.uplink_ip6)).received == 1


async def test_ra_driven_provisioning_learns_link_local_default_routes(tmp_path: Path) -> None:
    opts = pb.LabOpts(label="ra", outdir=pb.OutDir.exact(tmp_path), ipv6_provisioning=pb.Ipv6Provisioning.RA_DRIVEN)
    async with pb.Lab(opts) as lab:
        dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
        r = await lab.add_router("r").preset(pb.RouterPreset.PUBLIC).build()
        server = await lab.add_device("server").iface("eth0", dc).build()
        dev = await lab.add_device("dev").iface("eth0", r).iface("eth1", dc).build()
        routes = dev._state.ns.routes()  # type: ignore[union-attr]
        defaults = [x for x in routes if x.family == socket.AF_INET6 and x.dst == "default"]
        eth0 = dev.iface("eth0")
        # One default route, from the RA, via the router's link-local address, on eth0 only.
        assert [(x.via, x.proto) for x in defaults] == [(IPv6Address("fe80::1"), 9)]
        assert defaults[0].oif == dev._state.ifaces["eth0"].ifindex and eth0.ll6 is not None
        assert (await dev.ping(server.ip6)).received == 1
        # Switching the default interface: the route follows, learnt again from the other router.
        await dev.set_default_route("eth1")
        defaults = [x for x in dev._state.ns.routes() if x.family == socket.AF_INET6  # type: ignore[union-attr]
                    and x.dst == "default"]
        assert [(x.oif, x.proto) for x in defaults] == [(dev._state.ifaces["eth1"].ifindex, 9)]
        assert (await dev.ping(server.ip6)).received == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    dev_ra = [e["kind"] for e in events if e["kind"] in ("rs_sent", "ra_sent", "ra_route_installed")
              and (e["node"] == "dev" or e.get("device") == "dev")]
    assert dev_ra[:3] == ["rs_sent", "ra_sent", "ra_route_installed"]
    assert dev_ra[3:6] == ["rs_sent", "ra_sent", "ra_route_installed"]  # after set_default_route


async def test_dad_enabled_really_waits_for_the_kernel() -> None:
    async with pb.Lab(pb.LabOpts(ipv6_dad=pb.Ipv6Dad.ENABLED)) as lab:
        started = time.monotonic()
        r = await lab.add_router("r").preset(pb.RouterPreset.PUBLIC).build()
        dev = await lab.add_device("dev").iface("eth0", r).build()
        took = time.monotonic() - started
        addrs = [a for a in dev._state.ns.addrs() if a.ip.version == 6]  # type: ignore[union-attr]
        assert addrs and not any(a.tentative for a in addrs)
        assert took > 0.5, took  # the kernel's DAD probes take about a second per namespace
        assert (await dev.ping(r.gateway_ip6)).received == 1
    async with pb.Lab() as lab:
        r = await lab.add_router("r").preset(pb.RouterPreset.PUBLIC).build()
        dev = await lab.add_device("dev").iface("eth0", r).build()
        assert (await dev.ping(r.gateway_ip6)).received == 1  # DAD off: usable at once


async def test_ipv6_bad_input(lab: pb.Lab) -> None:
    with pytest.raises(pb.TopologyError, match="nat_v6 nptv6 needs IPv6 downstream"):
        await lab.add_router("x").nat_v6(pb.NatV6Mode.NPTV6).build()
    v6 = await lab.add_router("v6").ip_support(pb.IpSupport.V6_ONLY).build()
    with pytest.raises(pb.TopologyError, match="offers no address family"):
        await lab.add_router("v4").upstream(v6).build()
    dev = await lab.add_device("dev").iface("eth0", v6).build()
    with pytest.raises(pb.TopologyError, match="no IPv4 address to renew"):
        await dev.renew_ip("eth0")
    assert lab.routers() == [v6]


async def test_nptv6_behind_block_inbound_stays_closed(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    home = await lab.add_router("home").preset(pb.RouterPreset.HOME).nat_v6(pb.NatV6Mode.NPTV6).build()
    outside = await lab.add_device("outside").iface("eth0", dc).build()
    inside = await lab.add_device("inside").iface("eth0", home).build()
    mapped = nptv6.translate(inside.ip6, home.downstream_cidr6, home.npt_prefix6)  # type: ignore[arg-type]
    assert (await outside.ping(mapped, timeout=0.3)).received == 0  # the firewall holds
    assert (await inside.ping(outside.ip6)).received == 1  # outbound, and its replies, pass
    assert (await home.counters())["firewall.inbound_blocked"] >= 1


async def test_masquerade_covers_routers_chained_below(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    top = await lab.add_router("top").ip_support(pb.IpSupport.DUAL_STACK).nat_v6(pb.NatV6Mode.MASQUERADE).build()
    sub = await lab.add_router("sub").ip_support(pb.IpSupport.DUAL_STACK).upstream(top).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    deep = await lab.add_device("deep").iface("eth0", sub).build()
    assert (await deep.ping(server.ip6)).received == 1
    with pytest.raises(pb.TopologyError, match="translates only its own IPv6 prefix"):
        npt = await lab.add_router("npt").ip_support(pb.IpSupport.DUAL_STACK).nat_v6(pb.NatV6Mode.NPTV6).build()
        await lab.add_router("below").ip_support(pb.IpSupport.DUAL_STACK).upstream(npt).build()


async def test_ra_driven_link_flaps_and_interface_removal() -> None:
    async with pb.Lab(pb.LabOpts(ipv6_provisioning=pb.Ipv6Provisioning.RA_DRIVEN)) as lab:
        a = await lab.add_router("a").preset(pb.RouterPreset.PUBLIC).build()
        b = await lab.add_router("b").preset(pb.RouterPreset.PUBLIC).build()
        server = await lab.add_device("server").iface("eth0", a).build()
        dev = await lab.add_device("dev").iface("eth0", b).iface("eth1", a).build()
        await dev.link_down("eth0")
        await dev.link_up("eth0")  # the link-local address and the RA's route come back
        assert (await dev.ping(server.ip6)).received == 1
        assert dev.iface("eth0").ll6 in {x.ip for x in dev._state.ns.addrs()}  # type: ignore[union-attr]
        await dev.remove_iface("eth0")  # the default: eth1 takes over, by RA
        assert dev.default_iface().name == "eth1" and (await dev.ping(server.ip6)).received == 1


async def test_static_dad_link_flap_waits_for_the_kernel() -> None:
    async with pb.Lab(pb.LabOpts(ipv6_dad=pb.Ipv6Dad.ENABLED)) as lab:
        r = await lab.add_router("r").preset(pb.RouterPreset.PUBLIC).build()
        dev = await lab.add_device("dev").iface("eth0", r).build()
        await dev.link_down("eth0")
        await dev.link_up("eth0")
        assert not [x for x in dev._state.ns.addrs() if x.tentative]  # type: ignore[union-attr]
        assert (await dev.ping(r.gateway_ip6)).received == 1


async def test_ipv6_only_refusals(lab: pb.Lab) -> None:
    with pytest.raises(pb.TopologyError, match="no IPv4 LAN to NAT"):
        await lab.add_router("nat").ip_support(pb.IpSupport.V6_ONLY).nat(pb.Nat.HOME).build()
    with pytest.raises(pb.TopologyError, match="port forwards need IPv4"):
        await lab.add_router("fwd").ip_support(pb.IpSupport.V6_ONLY).port_forward("udp", 5000, "x").build()


async def test_download_conditions_shape_ipv6_too(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    v6 = await lab.add_router("v6").ip_support(pb.IpSupport.V6_ONLY).build()
    dual = await lab.add_router("dual").preset(pb.RouterPreset.PUBLIC).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    phone = await lab.add_device("phone").iface("eth0", v6).build()
    laptop = await lab.add_device("laptop").iface("eth0", dual).build()
    for dev in (phone, laptop):
        await dev.set_link_condition("eth0", {"latency_ms": 30}, direction="down")
    for dst in (phone.ip6, laptop.ip6, laptop.ip):  # what the router sends them, either family
        rtts = (await server.ping(dst, count=3, interval=0.05)).rtts_ms
        assert len(rtts) == 3 and min(rtts) >= 30, (dst, rtts)
    assert min((await server.ping(dc.gateway_ip6, count=3, interval=0.05)).rtts_ms) < 10  # others are not
