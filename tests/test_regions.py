"""Regions: latency between groups of routers, and cutting the links between them."""

from __future__ import annotations

import statistics

import pytest

import patchbay_core as pb

pytestmark = pytest.mark.anyio


async def rtt(a: pb.Device, b: pb.Device) -> float | None:
    result = await a.ping(b.ip, count=5, interval=0.02, timeout=0.6)
    return statistics.median(result.rtts_ms) if result.rtts_ms else None


async def test_latency_between_regions_reroutes_and_blackholes(lab: pb.Lab) -> None:
    eu, us, asia = await lab.add_region("eu"), await lab.add_region("us"), await lab.add_region("asia")
    await lab.link_regions(eu, us, pb.RegionLink.good(40))
    await lab.link_regions(eu, asia, pb.RegionLink.good(60))
    await lab.link_regions(us, asia, pb.RegionLink(latency_ms=50))
    a = await lab.add_device("a").iface("eth0", await lab.add_router("dc-eu").region(eu).build()).build()
    b = await lab.add_device("b").iface("eth0", await lab.add_router("dc-us").region("us").build()).build()
    c = await lab.add_device("c").iface("eth0", await lab.add_router("dc").build()).build()
    home = await lab.add_router("home-eu").region(eu).nat(pb.Nat.HOME).build()
    h = await lab.add_device("h").iface("eth0", home).build()

    eu_us = await rtt(a, b)
    assert eu_us is not None and 80 <= eu_us <= 88  # 40 ms each way
    assert (await rtt(h, b) or 0) >= 80  # a NATed home in the region pays it too
    assert (await rtt(a, c) or 99) < 2 and (await rtt(b, c) or 99) < 2  # regionless: no penalty

    await lab.break_region_link(eu, us)
    detour = await rtt(a, b)
    assert detour is not None and 220 <= detour <= 229  # through asia: 60 + 50 each way
    await lab.break_region_link("eu", "asia")
    assert await rtt(a, b) is None  # no path left: blackholed, not sneaking over the IX
    assert (await rtt(a, c) or 99) < 2
    await lab.restore_region_link(eu, us)
    back = await rtt(a, b)
    assert back is not None and 80 <= back <= 88


async def test_default_regions_and_mistakes(lab: pb.Lab) -> None:
    regions = await lab.add_default_regions()
    assert set(regions) == {"us", "eu", "asia", "sa", "oceania"}
    a = await lab.add_device("a").iface("eth0", await lab.add_router("r-eu").region(regions["eu"]).build()).build()
    b = await lab.add_device("b").iface("eth0", await lab.add_router("r-oc").region("oceania").build()).build()
    measured = await rtt(a, b)
    # eu-oceania goes through us: 40 + 80 ms each way beats the direct 140.
    assert measured is not None and 240 <= measured <= 249
    with pytest.raises(pb.TopologyError, match="unknown region 'mars'"):
        await lab.add_router("x").region("mars").build()
    with pytest.raises(pb.TopologyError, match="already linked"):
        await lab.link_regions("eu", "us", pb.RegionLink.good(1))
    with pytest.raises(pb.TopologyError, match="duplicate region name 'eu'"):
        await lab.add_region("eu")
    with pytest.raises(pb.TopologyError, match="hangs off the region"):
        await lab.add_router("y").region("eu").upstream("r-eu").build()
    assert {r.name for r in lab.routers()} == {"r-eu", "r-oc"}
