"""NPTv6 (RFC 6296): the mapping's properties, and crafted packets through a real router."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from ipaddress import IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP  # type: ignore[import-untyped]
from scapy.layers.inet6 import IPv6  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

import patchbay_core as pb
from patchbay_core import nptv6
from tests.natkit import wait_for


def _words(address: IPv6Address) -> list[int]:
    value = int(address)
    return [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]


def _sum(address: IPv6Address) -> int:
    total = nptv6.ones_sum(_words(address))
    return 0 if total == 0xFFFF else total  # one's complement: -0 is 0


prefix_lengths = st.sampled_from([32, 40, 48, 56, 64])


@st.composite
def prefix_pair(draw: st.DrawFn) -> tuple[IPv6Network, IPv6Network, IPv6Address]:
    length = draw(prefix_lengths)
    mask = ((1 << length) - 1) << (128 - length)
    inside = IPv6Network((draw(st.integers(0, (1 << 128) - 1)) & mask, length))
    outside = IPv6Network((draw(st.integers(0, (1 << 128) - 1)) & mask, length))
    host = draw(st.integers(0, (1 << (128 - length)) - 1))
    address = inside.network_address + host
    return inside, outside, address


@settings(max_examples=400, deadline=None)
@given(prefix_pair())
def test_the_mapping_is_checksum_neutral_reversible_and_prefix_only(case: tuple) -> None:
    inside, outside, address = case
    try:
        mapped = nptv6.translate(address, inside, outside)
    except ValueError as exc:
        # RFC 6296: the word that would carry the adjustment is 0xFFFF (-0): the subnet word of
        # a /48 or shorter, or every word of the interface identifier.
        words = _words(address)
        unadjustable = words[3] == 0xFFFF if inside.prefixlen <= 48 else all(w == 0xFFFF for w in words[4:])
        assert "carry the adjustment" in str(exc) and unadjustable
        return
    assert mapped in outside
    assert _sum(mapped) == _sum(address)  # checksum-neutral: transport checksums stay valid
    assert nptv6.translate(mapped, outside, inside) == address  # reversible
    # Only the prefix and the one adjusted word may change (RFC 6296 sections 3.2-3.5).
    before = _words(address)
    adjusted = 3 if inside.prefixlen <= 48 else next((i for i in range(4, 8) if before[i] != 0xFFFF), -1)
    prefix_words = (inside.prefixlen + 15) // 16
    changed = {i for i, (a, b) in enumerate(zip(before, _words(mapped), strict=True)) if a != b}
    assert changed <= set(range(prefix_words)) | {adjusted}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_the_lab_prefix_keeps_the_host_part_exactly(subnet: int, host_a: int, host_b: int) -> None:
    inside = IPv6Network((int(IPv6Address("fd10::")) | (subnet << 64), 64))
    outside = nptv6.neutral_prefix(inside)
    assert outside.subnet_of(nptv6.NPT_BASE) and nptv6.adjustment(inside, outside) in (0, 0xFFFF)
    a, b = inside.network_address + host_a, inside.network_address + host_b
    ma, mb = nptv6.translate(a, inside, outside), nptv6.translate(b, inside, outside)
    if host_a & 0xFFFF_FFFF_FFFF_FFFF != 0xFFFF_FFFF_FFFF_FFFF:
        assert int(ma) & ((1 << 64) - 1) == host_a  # the host part as it was
    assert (ma == mb) == (a == b)  # 1:1


# ---- crafted packets through a router ------------------------------------------------------


def sniff(iface: str, want: int, seconds: float, started: threading.Event) -> list[bytes]:
    """Frames arriving on `iface` (an AF_PACKET socket in the calling thread's namespace)."""
    frames: list[bytes] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD)) as s:
        s.bind((iface, 0))
        s.settimeout(0.1)
        started.set()
        end = time.monotonic() + seconds
        while len(frames) < want and time.monotonic() < end:
            try:
                data, addr = s.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] != socket.PACKET_OUTGOING:
                frames.append(data)
    return frames


def send_raw(packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for packet in packets:
            dst = str(IPv6(packet).dst)
            s.sendto(packet, (dst, 0))


def crafted(src: IPv6Address, dst: IPv6Address, seed: int) -> list[bytes]:
    """UDP and TCP packets of varied ports and payloads, with correct checksums."""
    rnd = random.Random(seed)
    out = []
    for i in range(12):
        payload = os.urandom(rnd.randint(0, 900))
        sport, dport = rnd.randint(1024, 65535), rnd.randint(1, 65535)
        seq = rnd.randint(0, 1 << 31)
        l4 = UDP(sport=sport, dport=dport) if i % 2 else TCP(sport=sport, dport=dport, flags="PA", seq=seq)
        out.append(bytes(IPv6(src=str(src), dst=str(dst), hlim=64) / l4 / payload))
    return out


def checksums_valid(frame: bytes) -> tuple[bool, IPv6]:
    packet = Ether(frame)[IPv6]
    l4 = packet.payload
    seen = l4.chksum
    l4.chksum = None
    recomputed = IPv6(bytes(packet))[type(l4)].chksum
    return seen == recomputed, packet


@pytest.mark.anyio
async def test_crafted_packets_cross_nptv6_with_valid_checksums_both_ways(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").preset(pb.RouterPreset.PUBLIC).build()
    npt = await lab.add_router("npt").ip_support(pb.IpSupport.DUAL_STACK).nat_v6(pb.NatV6Mode.NPTV6).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", npt).build()
    assert dev.ip6 is not None and server.ip6 is not None and npt.npt_prefix6 is not None
    mapped = nptv6.translate(dev.ip6, npt.downstream_cidr6, npt.npt_prefix6)  # type: ignore[arg-type]
    assert (await dev.ping(server.ip6)).received == 1  # neighbours known before the bursts

    for sender, receiver, src, dst, expect_src, expect_dst in (
        (dev, server, dev.ip6, server.ip6, mapped, server.ip6),  # outbound: the source is mapped
        (server, dev, server.ip6, mapped, server.ip6, dev.ip6),  # inbound: the destination is mapped back
    ):
        packets = crafted(src, dst, seed=hash(sender.name) & 0xFFFF)
        started = threading.Event()
        got = receiver.spawn_thread(sniff, "eth0", len(packets), 3.0, started)
        await wait_for(started)
        sender.run_sync(send_raw, packets)
        frames = got.result(5)
        assert len(frames) >= len(packets) - 1, (sender.name, len(frames))
        for frame in frames:
            valid, packet = checksums_valid(frame)
            assert valid, packet.summary()
            assert IPv6Address(packet.src) == expect_src and IPv6Address(packet.dst) == expect_dst


def test_an_all_ones_interface_identifier_cannot_carry_the_adjustment() -> None:
    # RFC 6296 section 3.5: with a prefix longer than /48 and every IID word 0xFFFF, no word
    # can take the adjustment; the mapping refuses rather than break checksums.
    inside, outside = IPv6Network("::/56"), IPv6Network("0:0:0:100::/56")
    with pytest.raises(ValueError, match="can carry the adjustment"):
        nptv6.translate(IPv6Address("::ffff:ffff:ffff:ffff"), inside, outside)


def test_a_subnet_word_of_all_ones_cannot_carry_the_adjustment() -> None:
    # With a /48 or shorter the subnet word (bits 48-63) takes the adjustment; 0xFFFF there is
    # one's-complement -0 and would come back as +0, so the mapping refuses it (hypothesis
    # found this case).
    inside, outside = IPv6Network("::/32"), IPv6Network("0:1::/32")
    with pytest.raises(ValueError, match="subnet word of 0xFFFF"):
        nptv6.translate(IPv6Address("0:0:0:ffff::"), inside, outside)
    assert nptv6.translate(IPv6Address("0:0:0:fffe::"), inside, outside) in outside
