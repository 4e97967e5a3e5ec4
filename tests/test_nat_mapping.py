"""Mapping behaviour: what a server on the public side sees, for every NAT preset."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import anyio
import pytest

import patchbay_core as pb
from tests.natkit import WHOAMI_PORT, tcp_reflexive, udp_reflexive, whoami

pytestmark = pytest.mark.anyio

PRESETS = [pb.Nat.NONE, pb.Nat.HOME, pb.Nat.CORPORATE, pb.Nat.FULL_CONE, pb.Nat.CLOUD_NAT, pb.Nat.CGNAT]
ENDPOINT_INDEPENDENT = {pb.Nat.NONE, pb.Nat.HOME, pb.Nat.FULL_CONE, pb.Nat.CGNAT}


@pytest.mark.parametrize("vantage", ["ix", "public-isp", "cgnat-isp"])
async def test_reflexive_address_for_every_preset(lab: pb.Lab, vantage: str) -> None:
    dc = await lab.add_router("dc").build()
    s1 = await lab.add_device("s1").iface("eth0", dc).build()
    s2 = await lab.add_device("s2").iface("eth0", dc).build()
    isp = None
    if vantage == "public-isp":
        isp = await lab.add_router("isp").build()
    elif vantage == "cgnat-isp":
        isp = await lab.add_router("isp").nat(pb.Nat.CGNAT).build()
        assert isp.downstream_cidr.subnet_of(IPv4Network("100.64.0.0/10"))
    nats = {}
    for preset in PRESETS:
        builder = lab.add_router(f"nat-{preset.value}").nat(preset)
        if isp is not None:
            builder = builder.upstream(isp)
        router = await builder.build()
        nats[preset] = (router, await lab.add_device(f"dev-{preset.value}").iface("eth0", router).build())

    targets = [(str(s1.ip), WHOAMI_PORT), (str(s2.ip), WHOAMI_PORT)]
    async with whoami(s1, s2):
        for n, (preset, (router, dev)) in enumerate(nats.items()):
            port = 20000 + n
            for proto, probe in (("udp", udp_reflexive), ("tcp", tcp_reflexive)):
                seen = await probe(dev, port, targets)
                ips = {IPv4Address(ip) for ip, _ in seen}
                if preset is pb.Nat.NONE:
                    expected_ip = dev.ip if vantage != "cgnat-isp" else isp.uplink_ip  # type: ignore[union-attr]
                elif vantage == "cgnat-isp":
                    expected_ip = isp.uplink_ip  # type: ignore[union-attr]  # double NAT: the carrier's address
                else:
                    expected_ip = router.uplink_ip
                assert ips == {expected_ip}, (preset, proto, seen)
                ports = [p for _, p in seen]
                if preset in ENDPOINT_INDEPENDENT:
                    assert ports[0] == ports[1], (preset, proto, seen)
                    if vantage != "cgnat-isp":
                        assert ports[0] == port, (preset, proto, seen)  # port preserved where free
                else:
                    assert ports[0] != ports[1], (preset, proto, seen)


async def test_two_devices_with_one_local_port_get_their_own_stable_ports(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    s1 = await lab.add_device("s1").iface("eth0", dc).build()
    s2 = await lab.add_device("s2").iface("eth0", dc).build()
    home = await lab.add_router("home").nat(pb.Nat.FULL_CONE).build()
    a = await lab.add_device("a").iface("eth0", home).build()
    # One host alone cannot collide with itself: the NAT has no rules for other ports yet...
    assert "nat.mapping_moved" not in await home.counters()
    b = await lab.add_device("b").iface("eth0", home).build()
    assert "nat.mapping_moved" in await home.counters()  # ... and gets them with the second
    targets = [(str(s1.ip), WHOAMI_PORT), (str(s2.ip), WHOAMI_PORT)]
    async with whoami(s1, s2):
        seen_a = await udp_reflexive(a, 40000, targets)
        seen_b = await udp_reflexive(b, 40000, targets)
        seen_a_again = await udp_reflexive(a, 40000, targets[::-1])
    assert seen_a == [(str(home.uplink_ip), 40000)] * 2  # the first keeps its port
    assert seen_b[0] == seen_b[1] and seen_b[0][1] != 40000  # the second gets another, stable one
    assert seen_a_again == seen_a
    mappings = await home.nat_mappings()
    externals = {(m.internal, m.external) for m in mappings if m.proto == "udp"}
    assert externals == {((a.ip, 40000), (home.uplink_ip, 40000)), ((b.ip, 40000), (home.uplink_ip, seen_b[0][1]))}


async def test_a_lone_host_that_may_collide_with_itself_gets_the_collision_rules(lab: pb.Lab) -> None:
    """One device, but two of its addresses (a renewed lease) or a forwarded port can want one
    external port: the NAT loads the rules that move a mapping to another port."""
    dc = await lab.add_router("dc").build()
    s1 = await lab.add_device("s1").iface("eth0", dc).build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    dev = await lab.add_device("dev").iface("eth0", home).build()
    targets = [(str(s1.ip), WHOAMI_PORT)]
    async with whoami(s1):
        before = await udp_reflexive(dev, 40000, targets)
        assert "nat.mapping_moved" not in await home.counters()
        old_ip = dev.ip
        new_ip = await dev.renew_ip("eth0")
        assert "nat.mapping_moved" in await home.counters()
        # The old address still owns port 40000: the new one moves next door, and stays there.
        after = await udp_reflexive(dev, 40000, targets)
        again = await udp_reflexive(dev, 40000, targets)
    assert before == [(str(home.uplink_ip), 40000)] and new_ip != old_ip
    assert after == again and after[0][1] != 40000 and abs(after[0][1] - 40000) < 8, after
    assert (await home.counters())["nat.mapping_moved"] == 1

    forwarding = await lab.add_router("fwd").nat(pb.Nat.HOME).port_forward("udp", 5000, "web").build()
    await lab.add_device("web").iface("eth0", forwarding).build()
    assert "nat.mapping_moved" in await forwarding.counters()


async def test_hosts_behind_a_router_that_does_not_translate_count_on_the_nat_above(lab: pb.Lab) -> None:
    """Routed (untranslated) hosts are sources of the NAT above; so are a NAT64 translator's
    address and, after set_nat_mode(NONE), a child's hosts."""
    dc = await lab.add_router("dc").build()
    s1 = await lab.add_device("s1").iface("eth0", dc).build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    inner = await lab.add_router("inner").upstream(home).build()  # routes, no NAT
    a = await lab.add_device("a").iface("eth0", inner).build()
    b = await lab.add_device("b").iface("eth0", inner).build()
    targets = [(str(s1.ip), WHOAMI_PORT)]
    async with whoami(s1):
        assert await udp_reflexive(a, 40000, targets) == [(str(home.uplink_ip), 40000)]
        seen_b = await udp_reflexive(b, 40000, targets)
        assert await udp_reflexive(b, 40000, targets) == seen_b and seen_b[0][1] != 40000
    assert (await home.counters())["nat.mapping_moved"] == 1

    home2 = await lab.add_router("home2").nat(pb.Nat.HOME).build()
    child = await lab.add_router("child").nat(pb.Nat.HOME).upstream(home2).build()
    await lab.add_device("c1").iface("eth0", child).build()
    await lab.add_device("c2").iface("eth0", child).build()
    assert "nat.mapping_moved" not in await home2.counters()  # one source so far: child's WAN
    await child.set_nat_mode(pb.Nat.NONE)
    assert "nat.mapping_moved" in await home2.counters()

    home3 = await lab.add_router("home3").nat(pb.Nat.HOME).build()
    await (lab.add_router("phone-isp").upstream(home3).nat(pb.Nat.HOME).ip_support(pb.IpSupport.DUAL_STACK)
           .nat_v6(pb.NatV6Mode.NAT64).build())
    assert "nat.mapping_moved" in await home3.counters()  # its WAN address and its translator's


async def test_a_second_host_racing_set_nat_mode_builds(lab: pb.Lab) -> None:
    """set_nat_mode plans the new config before its kernel job runs; a host built in between
    extends the table the old config wrote (here a symmetric NAT's, which has no `eim`)."""
    await lab.add_router("dc").build()
    home = await lab.add_router("home").nat(pb.Nat.CORPORATE).build()
    await lab.add_device("a").iface("eth0", home).build()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: lab.add_router("busy").nat(pb.Nat.HOME).build())  # keeps the kernel thread busy
        tg.start_soon(lambda: lab.add_device("b").iface("eth0", home).build())
        tg.start_soon(home.set_nat_mode, pb.Nat.HOME)
    assert "nat.mapping_moved" in await home.counters()


async def test_address_dependent_mapping(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    s1 = await lab.add_device("s1").iface("eth0", dc).build()
    s2 = await lab.add_device("s2").iface("eth0", dc).build()
    adm = pb.NatConfig(mapping=pb.NatMapping.ADDRESS_DEPENDENT, filtering=pb.NatFiltering.ADDRESS_DEPENDENT)
    nat = await lab.add_router("nat").nat(adm).build()
    dev = await lab.add_device("dev").iface("eth0", nat).build()
    async with whoami(s1, s2, ports=(WHOAMI_PORT, WHOAMI_PORT + 1)):
        seen = await udp_reflexive(dev, 30000, [(str(s1.ip), WHOAMI_PORT), (str(s1.ip), WHOAMI_PORT + 1),
                                                (str(s2.ip), WHOAMI_PORT)])
    # The same remote address on another port keeps the mapping; another address gets a new one.
    assert seen[0] == seen[1] and seen[2][1] != seen[0][1]
