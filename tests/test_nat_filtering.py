"""Filtering: which unsolicited inbound reaches a mapping, for each RFC 4787 filtering mode."""

from __future__ import annotations

import threading

import anyio
import pytest

import patchbay_core as pb
from tests.natkit import listen_udp, send_udp, wait_for

pytestmark = pytest.mark.anyio

F = pb.NatFiltering
# (a) the contacted ip:port, (b) the contacted ip from another port, (c) another ip.
EXPECTED = {
    F.ENDPOINT_INDEPENDENT: {b"contacted", b"same-ip-other-port", b"other-ip"},
    F.ADDRESS_DEPENDENT: {b"contacted", b"same-ip-other-port"},
    F.ADDRESS_AND_PORT_DEPENDENT: {b"contacted"},
}


@pytest.mark.parametrize("mapping", [pb.NatMapping.ENDPOINT_INDEPENDENT, pb.NatMapping.ADDRESS_AND_PORT_DEPENDENT])
@pytest.mark.parametrize("filtering", list(F))
async def test_unsolicited_inbound_follows_the_filtering_mode(
    lab: pb.Lab, mapping: pb.NatMapping, filtering: pb.NatFiltering
) -> None:
    dc = await lab.add_router("dc").build()
    s1 = await lab.add_device("s1").iface("eth0", dc).build()
    s2 = await lab.add_device("s2").iface("eth0", dc).build()
    nat = await lab.add_router("nat").nat(pb.NatConfig(mapping=mapping, filtering=filtering)).build()
    dev = await lab.add_device("dev").iface("eth0", nat).build()

    # The device talks to s1:5000 once; s1 learns the mapping from what arrives.
    mapped: dict[str, tuple[str, int]] = {}

    async def s1_side(_: pb.Device) -> None:
        sock = await anyio.create_udp_socket(local_host=str(s1.ip), local_port=5000)
        async with sock:
            _data, (host, port) = await sock.receive()
            mapped["addr"] = (host, port)
            await sock.sendto(b"contacted", host, port)

    started = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(s1.spawn, s1_side)
        await anyio.sleep(0.1)
        received: list[tuple[bytes, tuple[str, int]]] = []

        async def listen() -> None:
            received.extend(await listen_udp(dev, 7000, 1.0, started, send_first=(str(s1.ip), 5000)))

        tg.start_soon(listen)
        await wait_for(started)
        with anyio.fail_after(3):
            while "addr" not in mapped:
                await anyio.sleep(0.01)
        target = mapped["addr"]
        await send_udp(s1, 5001, target, b"same-ip-other-port")
        await send_udp(s2, 5000, target, b"other-ip")
    assert {data for data, _ in received} == EXPECTED[filtering]
    counters = await nat.counters()
    if filtering is F.ADDRESS_AND_PORT_DEPENDENT:
        assert counters["nat.inbound_dropped"] >= 6  # 3 + 3 probes never reached the device
    elif filtering is F.ENDPOINT_INDEPENDENT:
        assert counters["nat.inbound_admitted"] == 2  # nat chains see each new flow's first packet
