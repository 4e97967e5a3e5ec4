"""The NAT64 translator (csrc/nat64.c): direct calls with scapy-made packets, properties, and
one live router namespace wired the way patchbay_core.nat64 documents."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    defragment6,
)
from scapy.packet import Packet, Raw  # noqa: E402

from patchbay_core import PatchbayError  # noqa: E402
from patchbay_core.kernel import native  # noqa: E402
from patchbay_core.kernel.namespace import NetNs  # noqa: E402
from patchbay_core.kernel.nat64 import Nat64Result, Nat64Translator  # noqa: E402
from patchbay_core.nat64 import (  # noqa: E402
    WELL_KNOWN_PREFIX,
    Nat64Config,
    embed_v4,
    extract_v4,
    steering_ruleset,
    tun_routes,
)
from patchbay_core.netops import Addr, LinkSet, Route, VethPair  # noqa: E402
from patchbay_core.ping import ping  # noqa: E402
from tests.helpers import in_throwaway_home, netns_inodes_of_process  # noqa: E402

POOL = IPv4Address("198.18.0.11")
SERVER = IPv4Address("198.18.2.5")
CLIENT = "2001:db8:1::2"
CLIENT_B = "2001:db8:1::3"
SERVER6 = str(embed_v4(SERVER))
SELF6 = str(embed_v4(POOL))  # the default source of the translator's own ICMPv6 errors

T = TypeVar("T")


def make(**kw: Any) -> Nat64Translator:
    cfg: dict[str, Any] = {"pool4": (POOL,), "max_bindings": 1024}
    cfg.update(kw)
    return Nat64Translator(Nat64Config(**cfg))


@pytest.fixture
def tr() -> Iterator[Nat64Translator]:
    translator = make()
    yield translator
    translator.close()


def raw(pkt: Packet) -> bytes:
    return bytes(pkt)


def one(result: Nat64Result) -> bytes:
    assert result.reason is None, result.reason
    assert len(result.packets) == 1
    return result.packets[0]


# ---- independent checksum checks -------------------------------------------------------


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def assert_valid(packet: bytes) -> None:
    """Lengths consistent, IPv4 header checksum and the transport checksum verify (computed
    here, not by the code under test), and scapy re-serializes the same bytes when it
    recomputes the checksums itself."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        assert struct.unpack("!H", packet[2:4])[0] == len(packet)
        assert csum(packet[:ihl]) == 0xFFFF
        proto, l4 = packet[9], packet[ihl:]
        pseudo = packet[12:20] + struct.pack("!BBH", 0, proto, len(l4)) if proto in (6, 17) else b""
        if proto == 17 and l4[6:8] == b"\0\0":
            return
        assert csum(pseudo + l4) == 0xFFFF
        parsed = IP(packet)
        del parsed.chksum
        if proto in (6, 17, 1):
            del parsed.payload.chksum
        assert raw(parsed) == packet
    else:
        assert 40 + struct.unpack("!H", packet[4:6])[0] == len(packet)
        nh, l4 = packet[6], packet[40:]
        if nh == 44:  # a fragment: its checksum belongs to the reassembled packet
            return
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(l4), nh)
        assert csum(pseudo + l4) == 0xFFFF
        parsed = IPv6(packet)
        field = "cksum" if nh == 58 else "chksum"
        delattr(parsed.payload, field)
        assert raw(parsed) == packet


def v6_udp(sport: int = 40000, dport: int = 53, payload: bytes = b"hello", src: str = CLIENT,
           dst: str = SERVER6, **ip: Any) -> bytes:
    return raw(IPv6(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / Raw(payload))


def v4_reply(out: bytes, payload: bytes = b"world", **ip: Any) -> bytes:
    """The server's answer to the translated packet `out`."""
    p = IP(out)
    if UDP in p:
        l4: Packet = UDP(sport=p[UDP].dport, dport=p[UDP].sport)
    elif TCP in p:
        l4 = TCP(sport=p[TCP].dport, dport=p[TCP].sport, flags="SA", seq=1000, ack=p[TCP].seq + 1)
    else:
        l4 = ICMP(type=0, id=p[ICMP].id, seq=p[ICMP].seq)
    return raw(IP(src=p.dst, dst=p.src, **ip) / l4 / Raw(payload))


# ---- addresses -----------------------------------------------------------------------------


# RFC 6052 section 2.4, the examples table (IPv4 192.0.2.33).
RFC6052_EXAMPLES = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::c000:221"),
    ("64:ff9b::/96", "64:ff9b::c000:221"),
]


@pytest.mark.parametrize(("prefix", "expected"), RFC6052_EXAMPLES)
def test_embed_and_extract_follow_rfc6052(prefix: str, expected: str) -> None:
    assert embed_v4("192.0.2.33", prefix) == IPv6Address(expected)
    assert extract_v4(expected, prefix) == IPv4Address("192.0.2.33")


def test_embed_defaults_to_the_well_known_prefix_with_lab_addresses() -> None:
    # RFC 6052 3.1 says 64:ff9b::/96 is for global IPv4 only; TAYGA refuses 198.18/15 with
    # it. Labs use exactly that, so we accept it.
    assert IPv6Network("64:ff9b::/96") == WELL_KNOWN_PREFIX
    assert embed_v4("198.18.0.11") == IPv6Address("64:ff9b::c612:b")
    with pytest.raises(ValueError, match="not in the NAT64 prefix"):
        extract_v4("2001:db8::1")
    with pytest.raises(ValueError, match="RFC 6052 allows"):
        embed_v4("192.0.2.1", "2001:db8::/72")


@pytest.mark.parametrize(("prefix", "_"), RFC6052_EXAMPLES)
def test_the_engine_embeds_like_the_python_helper(prefix: str, _: str) -> None:
    with make(prefix=IPv6Network(prefix)) as t:
        out = one(t.process(v6_udp(dst=str(embed_v4(SERVER, prefix))), 0))
        assert IP(out).dst == str(SERVER)
        back = IPv6(one(t.process(v4_reply(out), 1)))
        assert back.src == str(embed_v4(SERVER, prefix))


def test_bad_configurations_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="RFC 6052"):
        Nat64Config(pool4=(POOL,), prefix=IPv6Network("2001:db8::/80"))
    with pytest.raises(ValueError, match="host bits"):
        Nat64Config(pool4=(POOL,), prefix=IPv6Network("2001:db8:0:0:ff00::/64"))
    with pytest.raises(ValueError, match="1 to 16"):
        Nat64Config(pool4=())
    with pytest.raises(ValueError, match="udp_ports"):
        Nat64Config(pool4=(POOL,), udp_ports=(2000, 1000))
    with pytest.raises(PatchbayError, match="cannot be a source"):
        Nat64Translator(Nat64Config(pool4=(IPv4Address("127.0.0.1"),)))


# ---- translation, both ways -------------------------------------------------------------


def test_udp_both_ways(tr: Nat64Translator) -> None:
    out = one(tr.process(v6_udp(tc=0xB8, hlim=17), 0))
    assert_valid(out)
    p = IP(out)
    assert (p.src, p.dst, p[UDP].dport, p[Raw].load) == (str(POOL), str(SERVER), 53, b"hello")
    assert p.tos == 0xB8 and p.ttl == 17  # the kernel's forward out of the TUN decrements
    assert p.flags == 0 and p.proto == 17  # small: DF clear (RFC 7915 5.1)
    back = one(tr.process(v4_reply(out, tos=0x28, ttl=50), 1))
    assert_valid(back)
    q = IPv6(back)
    assert (q.src, q.dst, q[UDP].sport, q[UDP].dport, q[Raw].load) == (SERVER6, CLIENT, 53, 40000, b"world")
    assert q.tc == 0x28 and q.hlim == 50
    counters = tr.counters()
    assert counters["translated.v6_to_v4"] == 1 and counters["translated.v4_to_v6"] == 1
    assert counters["bindings"] == 1 and counters["bindings.max"] == 1024


def test_large_packets_carry_df_and_decrement_ttl_is_an_option() -> None:
    with make(decrement_ttl=True) as t:
        out = one(t.process(v6_udp(payload=b"x" * 1300, hlim=9), 0))
        assert_valid(out)
        assert IP(out).flags == "DF" and IP(out).ttl == 8
        assert IPv6(one(t.process(v4_reply(out, ttl=9), 1))).hlim == 8


def test_tcp_handshake_both_ways_tracks_the_state(tr: Nat64Translator) -> None:
    syn = raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(sport=45000, dport=80, flags="S", seq=7,
                                                  options=[("MSS", 1440)]))
    out = one(tr.process(syn, 0))
    assert_valid(out)
    p = IP(out)
    assert p[TCP].flags == "S" and p[TCP].seq == 7 and p[TCP].options == [("MSS", 1440)]
    assert tr.bindings(0)[0].tcp_state == "opening"
    back = one(tr.process(v4_reply(out, payload=b""), 1))
    assert_valid(back)
    q = IPv6(back)
    assert q[TCP].dport == 45000 and q[TCP].flags == "SA" and q[TCP].ack == 8
    [b] = tr.bindings(1)
    assert b.tcp_state == "established" and b.expires_s == 7200
    assert b.remote == (SERVER, 80) and b.v6 == (IPv6Address(CLIENT), 45000)


def test_tcp_close_and_reset_shorten_the_binding_and_a_new_syn_reopens_it(tr: Nat64Translator) -> None:
    def seg(flags: str, from_v6: bool, now: int) -> None:
        if from_v6:
            pkt = raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(sport=45000, dport=80, flags=flags))
        else:
            port = tr.bindings(now)[0].v4[1]
            pkt = raw(IP(src=str(SERVER), dst=str(POOL)) / TCP(sport=80, dport=port, flags=flags))
        assert tr.process(pkt, now).reason is None

    seg("S", True, 0)
    seg("SA", False, 0)
    seg("FA", True, 10)
    assert tr.bindings(10)[0].tcp_state == "established"  # half closed: still established
    seg("FA", False, 20)
    [b] = tr.bindings(20)
    assert b.tcp_state == "closing" and b.expires_s == 240
    seg("A", True, 30_000)  # the last ACK does not refresh a closing binding
    assert tr.bindings(30_000)[0].expires_s == 210.02  # still from the second FIN, at 20 ms
    seg("S", True, 40_000)  # the client reuses its port: a new connection
    assert tr.bindings(40_000)[0].tcp_state == "opening"
    seg("SA", False, 40_000)
    seg("R", False, 50_000)
    assert tr.bindings(50_000)[0].tcp_state == "closing"
    seg("A", True, 60_000)  # traffic after a reset re-establishes it (RFC 6146)
    assert tr.bindings(60_000)[0].tcp_state == "established"


def test_non_syn_tcp_without_binding_is_dropped(tr: Nat64Translator) -> None:
    ack = raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(sport=45000, dport=80, flags="A"))
    assert tr.process(ack, 0) == Nat64Result([], "tcp_not_syn")


def test_icmp_echo_both_ways_maps_the_identifier(tr: Nat64Translator) -> None:
    req = raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6EchoRequest(id=0x1234, seq=5, data=b"ping!"))
    out = one(tr.process(req, 0))
    assert_valid(out)
    p = IP(out)
    assert p.proto == 1 and p[ICMP].type == 8 and p[ICMP].seq == 5 and p[ICMP].load == b"ping!"
    back = one(tr.process(v4_reply(out, payload=b"ping!"), 1))
    assert_valid(back)
    q = IPv6(back)
    assert ICMPv6EchoReply in q and q[ICMPv6EchoReply].id == 0x1234 and q[ICMPv6EchoReply].data == b"ping!"
    [b] = tr.bindings(1)
    assert b.proto == "icmp" and b.v6[1] == 0x1234 and b.expires_s == 60


def test_a_zero_udp_checksum_from_ipv4_gets_a_real_one(tr: Nat64Translator) -> None:
    out = one(tr.process(v6_udp(), 0))
    p = IP(out)
    reply = bytearray(raw(IP(src=p.dst, dst=p.src) / UDP(sport=53, dport=p[UDP].sport) / Raw(b"zero")))
    reply[26:28] = b"\0\0"  # IPv4 allows "no checksum"
    back = one(tr.process(bytes(reply), 1))
    assert_valid(back)
    assert IPv6(back)[UDP].chksum != 0


def test_two_clients_with_one_source_port_get_distinct_ports_and_their_own_replies(tr: Nat64Translator) -> None:
    out_a = one(tr.process(v6_udp(sport=62000, src=CLIENT, payload=b"a"), 0))
    out_b = one(tr.process(v6_udp(sport=62000, src=CLIENT_B, payload=b"b"), 0))
    port_a, port_b = IP(out_a)[UDP].sport, IP(out_b)[UDP].sport
    assert port_a == 62000  # preserved where free (it is in the range)
    assert port_b != port_a and 61001 <= port_b <= 65535
    assert IPv6(one(tr.process(v4_reply(out_b, b"to b"), 1))).dst == CLIENT_B
    back_a = IPv6(one(tr.process(v4_reply(out_a, b"to a"), 1)))
    assert back_a.dst == CLIENT and back_a[UDP].dport == 62000 and back_a[Raw].load == b"to a"
    # Endpoint-independent mapping: another remote, the same binding.
    other = one(tr.process(v6_udp(sport=62000, src=CLIENT, dst=str(embed_v4("198.18.7.7"))), 2))
    assert IP(other)[UDP].sport == port_a and len(tr.bindings(2)) == 2


def test_ports_outside_the_range_are_mapped_into_it() -> None:
    with make(udp_ports=(5000, 5001)) as t:
        ports = {IP(one(t.process(v6_udp(sport=40000, src=f"2001:db8:1::{i}"), 0)))[UDP].sport for i in (1, 2)}
        assert ports == {5000, 5001}
        assert t.process(v6_udp(sport=40000, src="2001:db8:1::3"), 0).reason == "ports_exhausted"
        assert t.counters()["dropped.ports_exhausted"] == 1


def test_a_pool_of_addresses_multiplies_the_ports() -> None:
    second = IPv4Address("198.18.0.12")
    with make(pool4=(POOL, second), udp_ports=(5000, 5000)) as t:
        outs = [one(t.process(v6_udp(sport=40000, src=f"2001:db8:1::{i}"), 0)) for i in (1, 2)]
        assert {IP(o).src for o in outs} == {str(POOL), str(second)} and {IP(o)[UDP].sport for o in outs} == {5000}
        assert t.process(v6_udp(sport=40000, src="2001:db8:1::3"), 0).reason == "ports_exhausted"
        for i, out in zip((1, 2), outs, strict=True):
            assert IPv6(one(t.process(v4_reply(out), 1))).dst == f"2001:db8:1::{i}"
        # The same client keeps its address for its other flows ("paired" pooling).
        with make(pool4=(POOL, second)) as paired:
            srcs = {IP(one(paired.process(v6_udp(sport=p), 0))).src for p in range(100, 110)}
            assert len(srcs) == 1


def test_bindings_expire_after_a_shortened_timeout() -> None:
    with make() as t:
        t.set_timeouts(udp=2, icmp=1, tcp_transitory=3)
        out = one(t.process(v6_udp(), 0))
        one(t.process(v4_reply(out), 1500))  # replies refresh the binding too: now until 3500
        assert t.bindings(1500)[0].expires_s == 2.0
        assert t.process(v4_reply(out), 3499).reason is None
        assert t.process(v4_reply(out), 5500).reason == "no_binding"
        assert t.bindings(5500) == [] and t.counters()["bindings.expired"] == 1
        req = raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6EchoRequest(id=9))
        echo = one(t.process(req, 10_000))
        syn = one(t.process(raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(sport=1, dport=2, flags="S")), 10_000))
        assert t.counters()["bindings"] == 2
        assert t.expire(11_001) == 1  # ICMP (1 s) went, TCP opening (3 s) stays
        assert t.process(v4_reply(echo), 11_001).reason == "no_binding"
        assert t.process(v4_reply(syn), 12_000).reason is None
        assert t.expire(13_001 + 7_200_000) == 1 and t.counters()["bindings"] == 0


def test_a_full_table_drops_new_flows_and_counts_them() -> None:
    with make(max_bindings=2) as t:
        t.set_timeouts(udp=10)
        one(t.process(v6_udp(sport=1), 0))
        one(t.process(v6_udp(sport=2), 0))
        assert t.process(v6_udp(sport=3), 0) == Nat64Result([], "table_full")
        assert t.process(v6_udp(sport=1), 5).reason is None  # existing flows go on
        counters = t.counters()
        assert counters["dropped.table_full"] == 1 and counters["bindings"] == 2
        one(t.process(v6_udp(sport=3), 10_006))  # after expiry there is room again


# ---- ICMP errors ---------------------------------------------------------------------------


def test_an_ipv4_port_unreachable_reaches_the_client_with_its_packet_inside(tr: Nat64Translator) -> None:
    original = v6_udp(sport=40000, dport=9, payload=b"knock")
    out = one(tr.process(original, 0))
    err = raw(IP(src=str(SERVER), dst=str(POOL)) / ICMP(type=3, code=3) / out)
    back = one(tr.process(err, 1))
    assert_valid(back)
    q = IPv6(back)
    assert q.src == SERVER6 and q.dst == CLIENT
    assert q[ICMPv6DestUnreach].code == 4
    inner = q[IPerror6]
    assert inner.src == CLIENT and inner.dst == SERVER6 and inner.nh == 17 and inner.plen == 13
    # The quoted transport header is the client's own, byte for byte, checksum included.
    assert raw(inner)[40:48] == original[40:48]
    assert tr.counters()["translated.icmp_errors"] == 1


def test_an_ipv4_time_exceeded_from_a_router_comes_from_its_embedded_address(tr: Nat64Translator) -> None:
    out = one(tr.process(v6_udp(hlim=3), 0))
    err = raw(IP(src="198.18.0.1", dst=str(POOL), ttl=64) / ICMP(type=11, code=0) / out[:28])
    q = IPv6(one(tr.process(err, 1)))
    assert q.src == str(embed_v4("198.18.0.1")) and q[ICMPv6TimeExceeded].code == 0
    assert q[IPerror6].dst == SERVER6


def test_an_ipv6_error_about_a_reply_reaches_the_ipv4_sender(tr: Nat64Translator) -> None:
    out = one(tr.process(v6_udp(sport=40000, dport=5353), 0))
    reply = v4_reply(out, b"late")
    back = one(tr.process(reply, 1))
    # The client closed its socket: its kernel answers port unreachable.
    err = raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6DestUnreach(code=4) / back)
    out_err = one(tr.process(err, 2))
    assert_valid(out_err)
    p = IP(out_err)
    assert p.src == str(POOL) and p.dst == str(SERVER) and p[ICMP].type == 3 and p[ICMP].code == 3
    inner = p[IPerror]
    assert inner.src == str(SERVER) and inner.dst == str(POOL) and inner.len == len(reply)
    assert raw(inner[UDPerror])[:8] == reply[20:28]  # the server's own UDP header, checksum too
    assert csum(raw(inner)[:20]) == 0xFFFF


# mtu + 20, at most mtu6 (1500); 0 is an old router: the RFC 1191 plateau below the quoted
# packet's length (1480 -> 1006, + 20); never below IPv6's minimum 1280 (hosts ignore less,
# and IPv4 packets of up to 1260 bytes leave DF clear for routers to fragment).
@pytest.mark.parametrize(("mtu", "expected"), [(1400, 1420), (0, 1280), (1000, 1280), (1492, 1500)])
def test_frag_needed_becomes_packet_too_big_with_rfc7915_arithmetic(tr: Nat64Translator, mtu: int,
                                                                     expected: int) -> None:
    out = one(tr.process(v6_udp(payload=b"y" * 1452), 0))  # 1500 bytes of IPv6, 1480 of IPv4
    err = raw(IP(src="198.18.0.1", dst=str(POOL)) / ICMP(type=3, code=4, nexthopmtu=mtu) / out)
    q = IPv6(one(tr.process(err, 1)))
    assert q[ICMPv6PacketTooBig].mtu == expected
    assert len(back := raw(q)) <= 1280 and back[48:56] == v6_udp(payload=b"y" * 1452)[:8]


def test_packet_too_big_from_ipv6_becomes_frag_needed(tr: Nat64Translator) -> None:
    out = one(tr.process(v6_udp(), 0))
    back = one(tr.process(v4_reply(out, b"z" * 1400), 1))
    err = raw(IPv6(src="2001:db8:1::1", dst=SERVER6) / ICMPv6PacketTooBig(mtu=1400) / back[:1232])
    p = IP(one(tr.process(err, 2)))
    assert p[ICMP].type == 3 and p[ICMP].code == 4 and p[ICMP].nexthopmtu == 1380
    assert p.dst == str(SERVER) and len(raw(p)) <= 576


def test_parameter_problem_pointers_are_mapped(tr: Nat64Translator) -> None:
    out = one(tr.process(v6_udp(), 0))
    err = raw(IP(src="198.18.0.1", dst=str(POOL)) / ICMP(type=12, code=0, ptr=8) / out[:28])  # TTL
    q = IPv6(one(tr.process(err, 1)))
    assert q[ICMPv6ParamProblem].ptr == 7  # the hop limit
    err = raw(IP(src="198.18.0.1", dst=str(POOL)) / ICMP(type=12, code=0, ptr=4) / out[:28])  # the ID
    assert tr.process(err, 1).reason == "icmp_type"  # has no IPv6 counterpart


def test_hop_limit_expiry_is_answered_with_time_exceeded(tr: Nat64Translator) -> None:
    original = v6_udp(hlim=1)
    result = tr.process(original, 0)
    assert result.reason == "hop_limit"
    [err] = result.packets
    assert_valid(err)
    q = IPv6(err)
    assert q.src == SELF6 and q.dst == CLIENT and q[ICMPv6TimeExceeded].code == 0
    assert raw(q[ICMPv6TimeExceeded].payload) == original
    assert one(tr.process(v6_udp(hlim=2), 0))[8] == 2
    out = one(tr.process(v6_udp(), 0))
    result = tr.process(v4_reply(out, ttl=1), 1)
    assert result.reason == "hop_limit"
    p = IP(result.packets[0])
    assert p.src == str(POOL) and p.dst == str(SERVER) and p[ICMP].type == 11
    counters = tr.counters()
    assert counters["dropped.hop_limit"] == 2 and counters["icmp_errors.sent"] == 2


def test_too_big_for_the_ipv4_side_is_answered_with_packet_too_big() -> None:
    with make(mtu4=1400) as t:
        big = v6_udp(payload=b"q" * 1452)
        result = t.process(big, 0)
        assert result.reason == "too_big"
        q = IPv6(result.packets[0])
        assert q.src == SELF6 and q[ICMPv6PacketTooBig].mtu == 1420 and len(raw(q)) == 1280
        # Up to 1260 bytes DF stays clear: the kernel fragments for a smaller IPv4 MTU.
        with make(mtu4=1000) as small:
            assert IP(one(small.process(v6_udp(payload=b"q" * 1100), 0))).flags == 0


def test_too_big_for_the_ipv6_side_with_df_is_answered_with_frag_needed() -> None:
    with make(mtu6=1400) as t:
        out = one(t.process(v6_udp(), 0))
        result = t.process(v4_reply(out, b"r" * 1452, flags="DF"), 1)
        assert result.reason == "too_big"
        p = IP(result.packets[0])
        assert p.src == str(POOL) and p[ICMP].type == 3 and p[ICMP].code == 4 and p[ICMP].nexthopmtu == 1380


def test_too_big_for_the_ipv6_side_without_df_goes_as_ipv6_fragments() -> None:
    with make(mtu6=1280) as t:
        out = one(t.process(v6_udp(), 0))
        payload = os.urandom(3000)
        result = t.process(v4_reply(out, payload), 1)
        assert result.reason is None and len(result.packets) == 3
        assert all(len(f) <= 1280 for f in result.packets)
        whole = defragment6([IPv6(f) for f in result.packets])
        assert whole[Raw].load == payload
        rebuilt = raw(IPv6(src=whole.src, dst=whole.dst, hlim=whole.hlim) / whole[UDP])
        assert_valid(rebuilt)
        assert t.counters()["fragments.sent"] == 3


# ---- offloads: GSO super-packets and partial checksums over the TUN ------------------------


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0,
         csum_offset: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def partial_tcp6(payload: bytes, mss: int, seq: int = 1, flags: str = "PA") -> bytes:
    """A TCP GSO packet as a TUN hands it over: the checksum field holds the pseudo-header sum."""
    pkt = IPv6(src=CLIENT, dst=SERVER6) / TCP(sport=45000, dport=5201, flags=flags, seq=seq) / Raw(payload)
    data = bytearray(raw(pkt))
    l4len = len(data) - 40
    ph = csum(data[8:40] + struct.pack("!IxxxB", l4len, 6))
    data[56:58] = struct.pack("!H", ph)
    return vnet(1, 4, 60, mss, 40, 16) + bytes(data)


def open_tcp(t: Nat64Translator) -> None:
    out = one(t.process(raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(sport=45000, dport=5201, flags="S")), 0))
    one(t.process(v4_reply(out, payload=b""), 0))


def test_a_tcp_gso_packet_is_translated_as_one(tr: Nat64Translator) -> None:
    open_tcp(tr)
    payload = os.urandom(20 * 1440)
    [out] = tr.process(partial_tcp6(payload, 1440), 1, vnet=True).packets
    flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack("<BBHHHH", out[:10])
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (1, 1, 40, 1440, 20, 16)
    ip = out[10:]
    assert IP(ip).flags == "DF" and len(ip) == 40 + len(payload) and ip[40:] == payload
    # partial: the checksum field is the IPv4 pseudo-header sum the kernel completes
    assert struct.unpack("!H", ip[36:38])[0] == csum(ip[12:20] + struct.pack("!BBH", 0, 6, len(ip) - 20))
    assert tr.counters()["translated.gso"] == 1


def test_a_tcp_gso_packet_from_ipv4_becomes_one_ipv6_gso_packet(tr: Nat64Translator) -> None:
    open_tcp(tr)
    port = tr.bindings(0)[0].v4[1]
    payload = os.urandom(10 * 1400)
    data = bytearray(raw(IP(src=str(SERVER), dst=str(POOL), flags="DF") / TCP(sport=5201, dport=port, flags="A")
                         / Raw(payload)))
    data[36:38] = struct.pack("!H", csum(data[12:20] + struct.pack("!BBH", 0, 6, len(data) - 20)))
    [out] = tr.process(vnet(1, 1, 40, 1400, 20, 16) + bytes(data), 1, vnet=True).packets
    assert struct.unpack("<BBHHHH", out[:10]) == (1, 4, 60, 1400, 40, 16)
    ip = out[10:]
    assert IPv6(ip).dst == CLIENT and IPv6(ip)[TCP].dport == 45000 and ip[60:] == payload
    assert struct.unpack("!H", ip[56:58])[0] == csum(ip[8:40] + struct.pack("!IxxxB", len(ip) - 40, 6))


def test_a_gso_packet_over_64k_of_ipv4_is_cut_at_a_segment_boundary(tr: Nat64Translator) -> None:
    open_tcp(tr)
    payload = os.urandom(65535 - 20)  # the largest IPv6 payload: 20 bytes too many for IPv4
    packets = tr.process(partial_tcp6(payload, 1000, seq=5000, flags="FPA"), 1, vnet=True).packets
    assert len(packets) == 2
    first, second = (IP(p[10:]) for p in packets)
    assert first[TCP].seq == 5000 and second[TCP].seq == 5000 + len(first[TCP].payload)
    assert len(first[TCP].payload) % 1000 == 0 and first.len <= 65535
    assert first[TCP].flags == "A" and second[TCP].flags == "FPA"
    assert raw(first[TCP].payload) + raw(second[TCP].payload) == payload


def test_bad_virtio_headers_are_counted(tr: Nat64Translator) -> None:
    open_tcp(tr)
    bad = bytearray(partial_tcp6(b"x" * 3000, 1440))
    bad[1] = 9  # no such GSO type
    assert tr.process(bytes(bad), 1, vnet=True).reason == "gso"
    udp_as_tcp_gso = vnet(1, 4, 48, 1000, 40, 6) + v6_udp(payload=b"u" * 3000)
    assert tr.process(udp_as_tcp_gso, 1, vnet=True).reason == "gso"


def test_a_read_round_of_one_flow_leaves_as_one_udp_gso_packet(tr: Nat64Translator) -> None:
    sizes = [100] * 10 + [50] + [100] * 3
    payloads = [os.urandom(n) for n in sizes]
    inputs = [vnet() + v6_udp(sport=40000, payload=p) for p in payloads]
    outs, reasons = tr.process_batch(inputs, 0)
    assert reasons == [None] * len(sizes)
    assert len(outs) == 2  # the shorter datagram closes the first train
    for out, group in zip(outs, (payloads[:11], payloads[11:]), strict=True):
        flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack("<BBHHHH", out[:10])
        assert (flags, gso_type, hdr_len, gso_size, start, offset) == (1, 5, 28, 100, 20, 6)
        ip = out[10:]
        assert csum(ip[:20]) == 0xFFFF and struct.unpack("!H", ip[2:4])[0] == len(ip)
        assert struct.unpack("!H", ip[24:26])[0] == len(ip) - 20  # the UDP length of the whole train
        pseudo = csum(ip[12:20] + struct.pack("!BBH", 0, 17, len(ip) - 20))
        assert struct.unpack("!H", ip[26:28])[0] == pseudo  # partial: the kernel finishes each segment
        assert ip[28:] == b"".join(group)
    assert tr.counters()["udp.coalesced"] == len(sizes)


def test_a_read_round_keeps_the_order_of_interleaved_flows(tr: Nat64Translator) -> None:
    a = [vnet() + v6_udp(sport=1, payload=b"a" * 20) for _ in range(2)]
    b = vnet() + v6_udp(sport=2, payload=b"b" * 20)
    outs, _ = tr.process_batch([*a, b, a[0]], 0)
    assert [IP(o[10:])[UDP].sport for o in outs] == [IP(outs[0][10:])[UDP].sport, IP(outs[1][10:])[UDP].sport,
                                                    IP(outs[0][10:])[UDP].sport]
    assert outs[0][1] == 5 and outs[1][1] == 0 and outs[2][1] == 0  # a train, then two alone
    alone = outs[1][10:]
    assert_valid(alone)  # a datagram alone goes out exactly as process() makes it


# ---- malformed input: every class a counted drop ------------------------------------------


def _ext_chain(n: int) -> bytes:
    layers: Packet = IPv6(src=CLIENT, dst=SERVER6)
    for _ in range(n):
        layers = layers / IPv6ExtHdrDestOpt()
    return raw(layers / UDP(sport=1, dport=2) / Raw(b"x"))


def _corrupt(packet: bytes, offset: int) -> bytes:
    data = bytearray(packet)
    data[offset] ^= 0xFF
    return bytes(data)


def _v4_to_pool(l4: Packet, **ip: Any) -> bytes:
    return raw(IP(src=str(SERVER), dst=str(POOL), **ip) / l4)


MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "truncated"),
    ("short ipv6 header", lambda: v6_udp()[:39], "truncated"),
    ("payload length past the end", lambda: v6_udp()[:-2], "truncated"),
    ("jumbogram", lambda: v6_udp()[:4] + b"\0\0" + v6_udp()[6:], "bad_length"),
    ("version 5", lambda: b"\x50" + v6_udp()[1:], "bad_version"),
    ("udp length lies", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / UDP(len=9) / Raw(b"hello")), "bad_length"),
    ("short udp", lambda: raw(IPv6(src=CLIENT, dst=SERVER6, nh=17) / Raw(b"1234")), "truncated"),
    ("bad udp checksum", lambda: _corrupt(v6_udp(), 46), "bad_checksum"),
    ("zero udp checksum over ipv6", lambda: v6_udp()[:46] + b"\0\0" + v6_udp()[48:], "bad_checksum"),
    ("bad tcp checksum", lambda: _corrupt(raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(flags="S")), 56), "bad_checksum"),
    ("tcp data offset 4", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(flags="S", dataofs=4)), "bad_header"),
    ("tcp data offset past the end", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(flags="S", dataofs=15)),
     "truncated"),
    ("bad icmpv6 checksum", lambda: _corrupt(raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6EchoRequest()), 42),
     "bad_checksum"),
    ("ipv6 fragment", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / IPv6ExtHdrFragment(offset=8, m=0) / Raw(b"x" * 8)),
     "fragment"),
    ("first ipv6 fragment", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / IPv6ExtHdrFragment(m=1) / UDP() / Raw(b"x")),
     "fragment"),
    ("nine extension headers", lambda: _ext_chain(9), "ext_headers"),
    ("hop-by-hop not first", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()
                                         / UDP() / Raw(b"x")), "ext_headers"),
    ("routing header with segments left",
     lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / IPv6ExtHdrRouting(addresses=["2001:db8::9"], segleft=1)
                 / UDP()), "ext_headers"),
    ("extension header past the end", lambda: _ext_chain(2)[:40 + 12], "truncated"),
    ("extension header length past the end",
     lambda: (lambda p: p[:41] + b"\xff" + p[42:])(_ext_chain(1)), "truncated"),
    ("esp", lambda: raw(IPv6(src=CLIENT, dst=SERVER6, nh=50) / Raw(b"\0" * 16)), "unknown_protocol"),
    ("outside the prefix", lambda: v6_udp(dst="2001:db8:99::1"), "not_prefix"),
    ("multicast source", lambda: v6_udp(src="ff02::1"), "bad_src"),
    ("unspecified source", lambda: v6_udp(src="::"), "bad_src"),
    ("to an embedded loopback", lambda: v6_udp(dst=str(embed_v4("127.0.0.1"))), "bad_dst"),
    ("to an embedded multicast", lambda: v6_udp(dst=str(embed_v4("224.0.0.1"))), "bad_dst"),
    ("to our own pool", lambda: v6_udp(dst=str(embed_v4(POOL))), "bad_dst"),
    ("icmpv6 router solicitation", lambda: raw(IPv6(src=CLIENT, dst=SERVER6, nh=58)
                                                / Raw(_icmp6(133, CLIENT, SERVER6))), "icmp_type"),
    ("echo reply without binding", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6EchoReply(id=4)), "no_binding"),
    ("icmpv6 error quoting nothing", lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6DestUnreach() / Raw(b"x" * 8)),
     "icmp_inner"),
    ("icmpv6 error quoting an error",
     lambda: raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6DestUnreach()
                 / IPv6(src=SERVER6, dst=CLIENT) / ICMPv6DestUnreach() / Raw(b"x" * 8)), "icmp_inner"),
    ("short ipv4 header", lambda: _v4_to_pool(UDP())[:19], "truncated"),
    ("ipv4 ihl 4", lambda: b"\x44" + _v4_to_pool(UDP())[1:], "bad_header"),
    ("ipv4 total length past the end", lambda: _v4_to_pool(UDP() / Raw(b"x" * 10))[:-3], "truncated"),
    ("ipv4 total length inside the header", lambda: (lambda p: p[:2] + b"\x00\x10" + p[4:])(_v4_to_pool(UDP())),
     "bad_length"),
    ("bad ipv4 header checksum", lambda: _corrupt(_v4_to_pool(UDP()), 10), "bad_checksum"),
    ("ipv4 fragment", lambda: _v4_to_pool(UDP() / Raw(b"x" * 16), flags="MF"), "fragment"),
    ("later ipv4 fragment", lambda: _v4_to_pool(Raw(b"x" * 16), frag=100, proto=17), "fragment"),
    ("ipv4 gre", lambda: _v4_to_pool(Raw(b"\0" * 8), proto=47), "unknown_protocol"),
    ("ipv4 not to the pool", lambda: raw(IP(src=str(SERVER), dst="198.18.0.99") / UDP()), "not_pool"),
    ("ipv4 from loopback", lambda: raw(IP(src="127.0.0.1", dst=str(POOL)) / UDP()), "bad_src"),
    ("ipv4 no binding", lambda: _v4_to_pool(UDP(sport=53, dport=61111)), "no_binding"),
    ("bad ipv4 udp checksum", lambda: _corrupt(_v4_to_pool(UDP(dport=61111) / Raw(b"abc")), 26), "bad_checksum"),
    ("bad icmpv4 checksum", lambda: _corrupt(_v4_to_pool(ICMP(type=0)), 22), "bad_checksum"),
    ("icmpv4 timestamp", lambda: _v4_to_pool(ICMP(type=13)), "icmp_type"),
    ("icmpv4 error quoting a short header", lambda: _v4_to_pool(ICMP(type=3, code=3) / Raw(b"\x45" + b"\0" * 10)),
     "icmp_inner"),
    ("icmpv4 error quoting no binding",
     lambda: _v4_to_pool(ICMP(type=3, code=3) / IP(src=str(POOL), dst=str(SERVER)) / UDP(sport=61111)), "no_binding"),
]


def _icmp6(type_: int, src: str, dst: str) -> bytes:
    body = bytes([type_, 0, 0, 0]) + b"\0" * 4
    pseudo = IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!IxxxB", len(body), 58)
    value = 0xFFFF - csum(pseudo + body)
    return body[:2] + struct.pack("!H", value) + body[4:]


@pytest.mark.parametrize(("make_packet", "reason"), [(m, r) for _, m, r in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_packets_are_counted_drops(tr: Nat64Translator, make_packet: Callable[[], bytes],
                                             reason: str) -> None:
    before = tr.counters()
    result = tr.process(make_packet(), 0)
    assert result == Nat64Result([], reason)
    after = tr.counters()
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert changed == {f"dropped.{reason}": 1}


def test_an_atomic_fragment_is_translated(tr: Nat64Translator) -> None:
    pkt = raw(IPv6(src=CLIENT, dst=SERVER6) / IPv6ExtHdrFragment(offset=0, m=0, id=7) / UDP(sport=1, dport=2)
              / Raw(b"atomic"))
    out = one(tr.process(pkt, 0))
    assert_valid(out)
    assert IP(out)[Raw].load == b"atomic"


def test_eight_extension_headers_are_walked(tr: Nat64Translator) -> None:
    out = one(tr.process(_ext_chain(8), 0))
    assert_valid(out)
    assert IP(out)[UDP].dport == 2


def test_a_too_small_output_buffer_is_reported() -> None:
    from patchbay_core.kernel.nat64 import ffi, lib  # the raw call: the wrapper's buffer is always big enough

    with make() as t:
        packet = v6_udp()
        out = ffi.new("uint8_t[]", 16)
        reason = ffi.new("int *")
        assert lib.pb_nat64_process(t._e, packet, len(packet), out, 16, 0, 0, reason) < 0
        assert t.counters()["dropped.no_space"] == 1


# ---- properties -------------------------------------------------------------------------------

v6_clients = st.builds(
    lambda prefix, low: str(IPv6Address(prefix << 64 | low)),
    st.integers(0x2000_0000_0000_0000, 0x3FFF_FFFF_FFFF_FFFF), st.integers(0, 2**64 - 1),
)
v4_servers = st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", st.integers(1, 223).filter(lambda a: a != 127),
                       st.integers(0, 255), st.integers(0, 255), st.integers(1, 254)).filter(lambda a: a != str(POOL))
ports = st.integers(1, 65535)
payloads = st.binary(max_size=1200)


@settings(max_examples=300, deadline=None)
@given(proto=st.sampled_from(["udp", "tcp", "icmp"]), client=v6_clients, server=v4_servers, sport=ports,
       dport=ports, out_payload=payloads, back_payload=payloads, tc=st.integers(0, 255), hlim=st.integers(2, 255))
def test_property_a_reply_restores_addresses_ports_and_payload(
    proto: str, client: str, server: str, sport: int, dport: int, out_payload: bytes, back_payload: bytes,
    tc: int, hlim: int,
) -> None:
    with make() as tr:
        _roundtrip(tr, proto, client, server, sport, dport, out_payload, back_payload, tc, hlim)


def _roundtrip(tr: Nat64Translator, proto: str, client: str, server: str, sport: int, dport: int,
               out_payload: bytes, back_payload: bytes, tc: int, hlim: int) -> None:
    dst6 = str(embed_v4(server))
    l4: Packet
    if proto == "udp":
        l4 = UDP(sport=sport, dport=dport)
    elif proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags="S", seq=sport)
    else:
        l4 = ICMPv6EchoRequest(id=sport, seq=dport)
    out = one(tr.process(raw(IPv6(src=client, dst=dst6, tc=tc, hlim=hlim) / l4 / Raw(out_payload)), 0))
    assert_valid(out)
    p = IP(out)
    assert p.dst == server and p.src == str(POOL) and p.tos == tc and p.ttl == hlim
    assert raw(p.payload)[8 if proto != "tcp" else 20:] == out_payload
    back = one(tr.process(v4_reply(out, back_payload), 1))
    assert_valid(back)
    q = IPv6(back)
    assert q.src == dst6 and q.dst == client
    if proto == "icmp":
        assert q[ICMPv6EchoReply].id == sport and q[ICMPv6EchoReply].data == back_payload
    else:
        layer = q[UDP] if proto == "udp" else q[TCP]
        assert (layer.sport, layer.dport) == (dport, sport)
        assert raw(layer.payload) == back_payload


def _events(counters: dict[str, int]) -> int:
    return counters["translated.v6_to_v4"] + counters["translated.v4_to_v6"] + sum(
        v for k, v in counters.items() if k.startswith("dropped."))


def _seed_packets() -> list[bytes]:
    out = one(make().process(v6_udp(), 0))
    return [
        v6_udp(), v4_reply(out), raw(IPv6(src=CLIENT, dst=SERVER6) / TCP(flags="S")), _ext_chain(3),
        raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6EchoRequest()),
        raw(IP(src=str(SERVER), dst=str(POOL)) / ICMP(type=3, code=4) / out),
        raw(IPv6(src=CLIENT, dst=SERVER6) / ICMPv6PacketTooBig() / IPv6(src=SERVER6, dst=CLIENT) / UDP()),
    ]


SEEDS = _seed_packets()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid packet with a few bytes overwritten and maybe cut short: it gets past the
    first checks far more often than random bytes do."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=1500, deadline=None)
@given(data=st.one_of(st.binary(max_size=200), mutated()), vnet=st.booleans())
def test_property_random_bytes_never_crash_and_are_translated_or_counted(data: bytes, vnet: bool) -> None:
    with make() as tr:
        _verdict(tr, data, vnet)


def _verdict(tr: Nat64Translator, data: bytes, vnet: bool) -> None:
    # One binding exists, so that mutated replies (and ICMP errors) reach the deep paths too.
    one(tr.process(v6_udp(), 0))
    before = _events(tr.counters())
    result = tr.process(data, 1, vnet=vnet)
    assert _events(tr.counters()) == before + 1  # exactly one verdict per packet
    if result.reason is None:
        assert result.packets
    else:
        assert result.reason in {k[8:] for k in tr.counters() if k.startswith("dropped.")}
    for packet in result.packets:
        ip = packet[10:] if vnet else packet
        flags = packet[0] if vnet else 0
        if flags & 1:  # a partial checksum: only the lengths can be checked
            assert len(ip) >= 20
        elif ip[0] >> 4 == 6 and ip[6] == 44:
            assert 40 + struct.unpack("!H", ip[4:6])[0] == len(ip)
        else:
            assert_valid(ip)


# ---- live: a router namespace with the translator on a TUN -------------------------------

CLONE_NEWNET = 0x40000000


def run_in(ns: NetNs, fn: Callable[[], T], timeout: float = 20.0) -> T:
    """Run fn on a fresh thread inside ns (sockets made there belong to it)."""
    out: list[T] = []
    err: list[BaseException] = []

    def main() -> None:
        try:
            if native.lib.pb_setns(ns.fd, CLONE_NEWNET):
                raise OSError("setns")
            out.append(fn())
        except BaseException as exc:
            err.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{fn} in {ns.node}")
    if err:
        raise err[0]
    return out[0]


def start_in(ns: NetNs, fn: Callable[[], T]) -> Callable[[], T]:
    """Start fn inside ns now; the returned callable waits for its result."""
    box: list[Any] = []
    ready = threading.Event()

    def main() -> None:
        try:
            if native.lib.pb_setns(ns.fd, CLONE_NEWNET):
                raise OSError("setns")
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("err", exc))
        finally:
            ready.set()

    threading.Thread(target=main, daemon=True).start()

    def wait() -> T:
        if not ready.wait(20):
            raise TimeoutError(str(fn))
        kind, value = box[0]
        if kind == "err":
            raise value
        return value  # type: ignore[no-any-return]

    return wait


LIVE_POOL = IPv4Address("198.18.0.11")
LIVE_SERVER = IPv4Address("198.18.0.20")


@contextmanager
def nat64_router(mtu4: int = 1500) -> Iterator[tuple[NetNs, NetNs, NetNs, Nat64Translator]]:
    """client (v6 only) -- lan [router + translator] wan -- server (v4 only), wired exactly as
    patchbay_core.nat64 documents. Must run on a thread whose home is a throwaway namespace."""
    base = {"net.ipv4.ping_group_range": "0 2147483647", "net.ipv6.conf.default.disable_ipv6": "1"}
    made: list[NetNs] = []
    translator: Nat64Translator | None = None
    try:
        router = NetNs.create("router", {**base, "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
                                         "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})
        made.append(router)
        client = NetNs.create("client", base)
        made.append(client)
        server = NetNs.create("server", base)
        made.append(server)
        router.apply([LinkSet(1, "lo", up=True), VethPair("lan", 16, "eth0", 16, client),
                      VethPair("wan", 17, "eth0", 16, server)])
        # The lab's base sysctls keep IPv6 off new interfaces: the v6 side turns it on.
        v6_on = {"disable_ipv6": "0", "accept_dad": "0"}
        router.write_sysctls({f"net.ipv6.conf.lan.{k}": v for k, v in v6_on.items()})
        client.write_sysctls({f"net.ipv6.conf.eth0.{k}": v for k, v in v6_on.items()})
        router.apply([Addr(16, "lan", IPv6Address("fd00:64::1"), 64), Addr(17, "wan", LIVE_POOL, 24)])
        client.apply([LinkSet(1, "lo", up=True), LinkSet(16, "eth0", up=True),
                      Addr(16, "eth0", IPv6Address("fd00:64::2"), 64),
                      Route(None, via=IPv6Address("fd00:64::1"), v6=True)])
        server.apply([LinkSet(1, "lo", up=True), LinkSet(16, "eth0", up=True), Addr(16, "eth0", LIVE_SERVER, 24)])
        config = Nat64Config(pool4=(LIVE_POOL,), mtu4=mtu4, mtu6=1500)
        translator = Nat64Translator(config, node="router")
        ifindex = translator.start(router.fd, "nat64")
        router.apply(tun_routes(config.prefix, ifindex))
        router.nft(steering_ruleset(config, "wan", "nat64"))
        yield client, router, server, translator
    finally:
        if translator is not None:
            translator.close()
        for ns in made:
            ns.close()


def test_live_udp_tcp_ping_and_icmp_errors_through_the_tun() -> None:
    """The documented wiring, end to end. mtu4=1400 stands for a narrower IPv4 path beyond the
    router: the client's 1500-byte TCP segments meet the translator's own Packet Too Big, and
    path MTU discovery must make the 1 MiB arrive intact anyway."""
    target = str(embed_v4(LIVE_SERVER))

    def udp_echo_server() -> tuple[str, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(LIVE_SERVER), 7))
            s.settimeout(10)
            data, peer = s.recvfrom(2000)
            s.sendto(data.upper(), peer)
            return peer  # type: ignore[no-any-return]

    def udp_client() -> tuple[bytes, Any]:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"hello nat64", (target, 7))
            return s.recvfrom(2000)  # type: ignore[no-any-return]

    def udp_to_closed_port() -> str:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.connect((target, 9))
            s.send(b"anyone?")
            try:
                s.recv(100)
            except ConnectionRefusedError:
                return "refused"  # the server's port unreachable, translated
            return "answered"

    burst = [os.urandom(200 + (i % 7) * 100) for i in range(400)]

    def burst_server() -> list[bytes]:
        got: list[bytes] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((str(LIVE_SERVER), 8))
            s.settimeout(2)
            try:
                while len(got) < len(burst):
                    got.append(s.recv(4000))
            except TimeoutError:
                pass
        return got

    def burst_client() -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect((target, 8))
            for datagram in burst:
                s.send(datagram)

    payload = os.urandom(1 << 20)

    def tcp_server() -> tuple[int, bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
            ls.bind((str(LIVE_SERVER), 5001))
            ls.listen(1)
            ls.settimeout(10)
            conn, _ = ls.accept()
            with conn:
                conn.settimeout(10)
                digest, n = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 16):
                    digest.update(chunk)
                    n += len(chunk)
                conn.sendall(digest.digest())
                return n, digest.digest()

    def tcp_client() -> bytes:
        with socket.create_connection((target, 5001), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            return s.recv(64)

    def scenario(_home: NetNs) -> dict[str, Any]:
        with nat64_router(mtu4=1400) as (client, _router, server, translator):
            assert translator.thread_id is not None
            wait = start_in(server, udp_echo_server)
            time.sleep(0.1)
            data, peer = run_in(client, udp_client)
            server_saw = wait()
            ping_result = run_in(client, lambda: asyncio.run(ping(target, count=3, timeout=2)))
            refused = run_in(client, udp_to_closed_port)
            wait_burst = start_in(server, burst_server)
            time.sleep(0.1)
            run_in(client, burst_client)
            burst_got = wait_burst()
            wait_tcp = start_in(server, tcp_server)
            time.sleep(0.1)
            answer = run_in(client, tcp_client)
            received, digest = wait_tcp()
            # Late segments (the TCP close) may still be in flight: read both views of the
            # counters at a moment when the translator's own did not move meanwhile.
            for _ in range(50):
                counters, router = translator.counters(), translator.router_counters()
                if translator.counters() == counters:
                    break
                time.sleep(0.05)
            return {"burst": burst_got, "data": data, "peer": peer, "server_saw": server_saw, "ping": ping_result,
                    "refused": refused, "answer": answer, "received": received, "digest": digest,
                    "counters": counters, "router": router, "bindings": translator.bindings()}

    held_before = netns_inodes_of_process()
    r = in_throwaway_home(scenario, timeout=120)
    # Everything went with the lab: no namespace held, no translator thread left.
    assert netns_inodes_of_process() == held_before
    assert "pb-nat64" not in {Path(f"/proc/self/task/{t}/comm").read_text().strip()
                              for t in os.listdir("/proc/self/task")}
    assert r["data"] == b"HELLO NAT64" and r["peer"][0] == target
    assert r["server_saw"][0] == str(LIVE_POOL) and 61001 <= r["server_saw"][1] <= 65535
    assert r["ping"].received == 3
    assert r["refused"] == "refused"
    # Datagram boundaries survive the UDP GSO trains (the receiving socket segments them).
    assert sorted(r["burst"]) == sorted(burst) and len(r["burst"]) == len(burst)
    assert r["received"] == len(payload) and r["answer"] == r["digest"] == hashlib.sha256(payload).digest()
    c = r["counters"]
    assert c["translated.v6_to_v4"] > 10 and c["translated.v4_to_v6"] > 10
    assert c["translated.gso"] > 0  # TCP went through as super-packets
    assert c["udp.coalesced"] > 0  # the burst went (partly) as UDP GSO trains, and arrived whole
    assert c["translated.icmp_errors"] >= 1  # the port unreachable
    assert c["dropped.too_big"] >= 1 and c["icmp_errors.sent"] >= 1  # PMTU discovery happened
    assert {k for k, v in c.items() if k.startswith("dropped.") and v} == {"dropped.too_big"}
    assert r["router"]["nat64.translated"] == c["translated.v6_to_v4"] + c["translated.v4_to_v6"]
    assert {b.proto for b in r["bindings"]} == {"udp", "tcp", "icmp"}
