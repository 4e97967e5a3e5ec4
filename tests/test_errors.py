"""Builder mistakes name the node and the field; a failed build leaves nothing behind."""

from __future__ import annotations

import contextlib
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest

import patchbay_core as pb
from patchbay_core.kernel import rtnl
from tests.helpers import lab_netns_inodes

pytestmark = pytest.mark.anyio


async def test_duplicate_names_are_refused(lab: pb.Lab) -> None:
    r = await lab.add_router("x").build()
    with pytest.raises(pb.TopologyError, match=r"^x: duplicate name: a router named 'x'"):
        await lab.add_router("x").build()
    with pytest.raises(pb.TopologyError, match=r"^x: duplicate name"):
        await lab.add_device("x").iface("eth0", r).build()


async def test_unknown_router_is_named(lab: pb.Lab) -> None:
    await lab.add_router("dc").build()
    with pytest.raises(pb.TopologyError) as err:
        await lab.add_device("laptop").iface("eth0", "nope").build()
    assert str(err.value) == "laptop.iface('eth0'): unknown router 'nope' (routers: dc)"
    with pytest.raises(pb.TopologyError, match=r"^home\.upstream: unknown router 'isp'"):
        await lab.add_router("home").upstream("isp").build()


async def test_over_long_interface_name(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    with pytest.raises(pb.TopologyError) as err:
        await lab.add_device("laptop").iface("wireless-lan-0001", r).build()
    assert "laptop.iface('wireless-lan-0001')" in str(err.value) and "17 bytes" in str(err.value)


async def test_pool_exhausted_names_device_router_and_pool(lab: pb.Lab) -> None:
    tiny = await lab.add_router("tiny").downstream_cidr("10.99.0.0/30").build()
    first = await lab.add_device("first").iface("eth0", tiny).build()
    assert first.ip == IPv4Address("10.99.0.2")
    with pytest.raises(pb.TopologyError) as err:
        await lab.add_device("second").iface("eth0", tiny).build()
    assert str(err.value) == "second.iface('eth0'): router 'tiny' has no address left in 10.99.0.0/30"
    assert [d.name for d in lab.devices()] == ["first"]


async def test_other_builder_mistakes(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    await lab.add_router("other").downstream_cidr("10.50.0.0/24").build()
    cases = [
        (lab.add_router("a").preset("nonsense"), r"^a\.preset: unknown router preset 'nonsense'; known: "),
        (lab.add_router("b").nat("bogus"), r"^b\.nat: unknown nat preset 'bogus'"),
        (lab.add_router("c").downstream_cidr("10.50.0.128/25"), r"^c\.downstream_cidr: 10.50.0.128/25 overlaps"),
        (lab.add_router("d").downstream_cidr("not-a-net"), r"^d\.downstream_cidr: 'not-a-net' is not a network"),
        (lab.add_router("e").mtu(10), r"^e\.mtu: mtu 10 is out of range"),
        (lab.add_router("f").isolated().upstream(r), r"^f\.upstream: an isolated router has no upstream"),
        (lab.add_device("g").iface("eth0", r).default_via("wlan0"), r"^g\.default_via: default_via names 'wlan0'"),
        (lab.add_device("h").iface("eth0", r).iface("eth0", r), r"^h\.iface\('eth0'\): interface 'eth0' given twice"),
        (lab.add_device("ix").iface("eth0", r), r"^ix: 'ix' is the name of the lab's internet exchange"),
    ]
    for builder, pattern in cases:
        with pytest.raises(pb.TopologyError, match=pattern):
            await builder.build()
    assert sorted(x.name for x in lab.routers()) == ["other", "r"]
    assert lab.devices() == []


def _ix_link_names(lab: pb.Lab) -> set[str]:
    return {link.name for link in rtnl.dump_links(lab._ix.ns.rtnl_fd, "ix")}  # type: ignore[union-attr]


async def test_a_router_failing_in_the_kernel_leaves_nothing(lab: pb.Lab) -> None:
    await lab.add_router("dc").build()
    before_ns = lab_netns_inodes(lab)
    before_links = _ix_link_names(lab)
    # Sabotage: the pool route the next router needs already exists in the IX, so its build
    # fails after its namespace, links and addresses were made.
    proc = await lab.ix.spawn_command(["ip", "route", "add", "198.18.2.0/24", "dev", "br-ix"])
    assert await proc.wait() == 0
    with pytest.raises(pb.NetlinkError) as err:
        await lab.add_router("broken").build()
    assert err.value.node == "ix" and "add route 198.18.2.0/24 via 198.18.0.11" in str(err.value)
    assert "File exists" in str(err.value)
    assert lab_netns_inodes(lab) == before_ns
    assert _ix_link_names(lab) == before_links
    assert [r.name for r in lab.routers()] == ["dc"]
    # The name, the IX address and the pool are free again.
    proc = await lab.ix.spawn_command(["ip", "route", "del", "198.18.2.0/24"])
    assert await proc.wait() == 0
    again = await lab.add_router("broken").build()
    assert again.uplink_ip == IPv4Address("198.18.0.11")
    assert str(again.downstream_cidr) == "198.18.2.0/24"


async def test_a_device_failing_in_the_kernel_leaves_nothing(lab: pb.Lab) -> None:
    a = await lab.add_router("a").build()
    b = await lab.add_router("b").build()
    before_ns = lab_netns_inodes(lab)
    # Sabotage: remove router b's LAN from the IX, so the device's second interface fails.
    lower = f"l{b.id}"
    proc = await lab.ix.spawn_command(["ip", "link", "del", lower], stderr=subprocess.PIPE)
    assert await proc.wait() == 0
    with pytest.raises(pb.NetlinkError, match=r"ix: create macvlan wlan0: No such device"):
        await lab.add_device("phone").iface("eth0", a).iface("wlan0", b).build()
    assert lab_netns_inodes(lab) == before_ns
    assert lab.devices() == []
    # Its address on router a was given back.
    other = await lab.add_device("other").iface("eth0", a).build()
    assert other.ip == IPv4Address("198.18.1.2")


async def test_spawn_of_a_plain_function_says_what_to_use(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    with pytest.raises(TypeError, match=r"router 'r': spawn\(\) needs an async function.*run_sync"):
        await r.spawn(lambda h: 42)  # type: ignore[arg-type, return-value]


async def test_pools_never_collide_and_nated_lans_may_share_a_range(lab: pb.Lab) -> None:
    explicit = await lab.add_router("explicit").downstream_cidr("198.18.1.0/24").build()
    auto = await lab.add_router("auto").build()
    assert auto.downstream_cidr != explicit.downstream_cidr  # the plan skips ranges in use
    home1 = await lab.add_router("home1").nat(pb.Nat.HOME).downstream_cidr("192.168.1.0/24").build()
    home2 = await lab.add_router("home2").nat(pb.Nat.HOME).downstream_cidr("192.168.1.0/24").build()
    d1 = await lab.add_device("d1").iface("eth0", home1).build()
    d2 = await lab.add_device("d2").iface("eth0", home2).build()
    assert d1.ip == d2.ip  # two homes, one address plan, as in real life
    srv = await lab.add_device("srv").iface("eth0", auto).build()
    assert (await d1.ping(srv.ip)).received == 1 and (await d2.ping(srv.ip)).received == 1
    with pytest.raises(pb.TopologyError, match=r"overlaps 192\.168\.1\.0/24 of router 'home1'"):
        await lab.add_router("public").downstream_cidr("192.168.1.0/25").build()  # routed: no
    with pytest.raises(pb.TopologyError, match=r"overlaps 192\.168\.1\.0/24 of router 'home1'"):
        await lab.add_router("inner").nat(pb.Nat.HOME).upstream(home1).downstream_cidr("192.168.1.0/24").build()


async def test_a_build_abandoned_by_its_caller_leaves_records_and_kernel_in_step() -> None:
    import asyncio

    async with pb.Lab() as lab:
        for n in range(12):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lab.add_router(f"r{n}").build(), timeout=0.0005 * (n % 4))
        # Read the IX on the kernel thread: after every job still queued there (the abandoned
        # builds finish on their own), and never beside it on the same netlink socket.
        names = await lab._kernel.run(  # type: ignore[union-attr]
            lambda: {link.name for link in rtnl.dump_links(lab._ix.ns.rtnl_fd, "ix")})  # type: ignore[union-attr]
        ports = {n for n in names if n.startswith("r") and n[1:].isdigit()}
        assert len(ports) == len(lab.routers())  # every router the kernel has, the lab knows


async def test_a_bad_outdir_is_named_and_leaves_nothing_running(tmp_path: Path) -> None:
    import threading

    blocker = tmp_path / "file"
    blocker.write_text("")
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(pb.PatchbayError, match=f"cannot write the lab's output under {blocker}/sub"):
        async with pb.Lab(pb.LabOpts(outdir=blocker / "sub")):
            pass
    assert {t.name for t in threading.enumerate()} == before
