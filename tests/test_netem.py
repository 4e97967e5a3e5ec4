"""The netem backend: its encoding (golden bytes), its selection, and its qdisc operations sent to
real namespaces. This project's kernels have no sch_netem, so the netem qdisc itself is checked
up to the kernel's kind lookup, and everything around it (IFB, filters, root and replacement)
with a qdisc this kernel has in netem's place."""

from __future__ import annotations

import struct

import pytest

import patchbay_core as pb
from patchbay_core import link_shaping, netem
from patchbay_core.kernel.wire import dump_filters, dump_qdiscs, send_tc
from patchbay_core.link_shaping import LinkShaper, NetemSupport, check_backend
from patchbay_core.netops import CLSACT_EGRESS

pytestmark = pytest.mark.anyio

# This VM's /proc/net/psched: t2us=1000, us2t=64, clock_res=1000000 (1 MHz), hz=1e9. iproute2's
# tc_core_init gives tick_in_usec = 1000 / 64 * (1000000 / 1000000) = 15.625 ticks per us
# (a tick is 64 ns, the kernel's PSCHED_SHIFT of 6).
ETH_P_ALL = 0x0003  # the filters match every protocol; their program checks the EtherType
PSCHED = netem.Psched.parse("000003e8 00000040 000f4240 3b9aca00\n")


def test_psched_ticks_as_iproute2_computes_them() -> None:
    assert PSCHED.tick_in_usec == 15.625
    assert PSCHED.ticks(50_000) == 781_250  # 50 ms
    assert PSCHED.ticks(10_000) == 156_250
    # A 1 GHz clock (clock_res 1e9) means t2us = us2t: ticks per us = 1 * 1000.
    assert netem.Psched.parse("000003e8 00000040 3b9aca00 3b9aca00").tick_in_usec == 1000.0


def test_golden_bytes_of_tc_netem_delay_loss_rate() -> None:
    """What `tc qdisc add dev X root netem delay 50ms 10ms loss 5% 25% rate 2mbit` puts in
    TCA_OPTIONS (iproute2 6.x netem_parse_opt), derived by hand from linux/pkt_sched.h:

      struct tc_netem_qopt (6 x u32): latency 781250 ticks, limit 1000, loss 5% =
        rint(0.05 * 0xffffffff) = 214748365, gap 0, duplicate 0, jitter 156250 ticks
      TCA_NETEM_CORR (type 1, 4 + 12 bytes): delay_corr 0, loss_corr 25% = rint(0.25 *
        0xffffffff) = 1073741824, dup_corr 0
      TCA_NETEM_RATE (type 6, 4 + 16 bytes): rate 2 Mbit/s = 250000 bytes/s, packet_overhead 0,
        cell_size 0, cell_overhead 0
    little-endian, each attribute 4-byte aligned."""
    expected = bytes.fromhex(
        "c2eb0b00" "e8030000" "cdcccc0c" "00000000" "00000000" "5a620200"  # tc_netem_qopt
        "10000100" "00000000" "00000040" "00000000"  # nla(16, CORR) + tc_netem_corr
        "14000600" "90d00300" "00000000" "00000000" "00000000"  # nla(20, RATE) + tc_netem_rate
    )
    opts = netem.NetemOptions(latency_us=50_000, jitter_us=10_000, loss_pct=5, loss_corr_pct=25,
                              rate_bytes=2_000_000 // 8)
    assert netem.encode(opts, PSCHED) == expected


def test_golden_bytes_of_reorder_duplicate_corrupt_and_a_64_bit_rate() -> None:
    """`tc qdisc add ... netem delay 20ms reorder 10% duplicate 2% corrupt 1% rate 40gbit`:
    reordering makes tc set gap 1; TCA_NETEM_REORDER (3) {probability, correlation};
    TCA_NETEM_CORRUPT (4) {probability, correlation}; a rate of 2^32 bytes/s or more goes in
    TCA_NETEM_RATE64 (8, u64) before TCA_NETEM_RATE, whose rate is then ~0."""
    ten, two, one = 429496730, 85899346, 42949673  # rint(p * 0xffffffff) for 10 %, 2 %, 1 %
    expected = (
        struct.pack("<6I", 312_500, 1000, 0, 1, two, 0)
        + struct.pack("<HH2I", 12, 3, ten, 0)
        + struct.pack("<HH2I", 12, 4, one, 0)
        + struct.pack("<HHQ", 12, 8, 5_000_000_000)
        + struct.pack("<HHIiIi", 20, 6, 0xFFFFFFFF, 0, 0, 0)
    )
    opts = netem.NetemOptions(latency_us=20_000, reorder_pct=10, duplicate_pct=2, corrupt_pct=1,
                              rate_bytes=40_000_000_000 // 8)
    assert netem.encode(opts, PSCHED) == expected


def test_link_limits_become_the_wires_semantics_on_netem() -> None:
    """Loss correlation is the wire's two-state chain: tc's `loss gemodel P R 100% 0%` with
    P = loss (1 - corr), R = (1 - loss)(1 - corr), sent as TCA_NETEM_LOSS (5 | NLA_F_NESTED)
    holding NETEM_LOSS_GE (2) {p, r, h, k1}, where h = 0xffffffff - pct(1-h) = 0 (every packet
    lost in the bad state) and k1 = 0 (none in the good); qopt.loss stays 0. Jitter without a
    rate gets an unreachable rate (2^62 bytes/s, RATE64): netem keeps order only with a rate.
    A seed becomes TCA_NETEM_PRNG_SEED (14, u64)."""
    limits = pb.LinkLimits(latency_ms=40, jitter_ms=10, loss_pct=10, loss_correlation_pct=50)
    opts = netem.options_for(limits, seed=7)
    assert opts.gemodel == pytest.approx((5.0, 45.0, 100.0, 0.0))
    p, r = 214748365, 1932735283  # rint(0.05 * 0xffffffff), rint(0.45 * 0xffffffff)
    expected = (
        struct.pack("<6I", 625_000, 100_000, 0, 0, 0, 156_250)
        + struct.pack("<HH", 24, 5 | 0x8000) + struct.pack("<HH4I", 20, 2, p, r, 0, 0)
        + struct.pack("<HHQ", 12, 8, 1 << 62)
        + struct.pack("<HHIiIi", 20, 6, 0xFFFFFFFF, 0, 0, 0)
        + struct.pack("<HHQ", 12, 14, 7)
    )
    assert netem.encode(opts, PSCHED) == expected
    # Uncorrelated loss is plain random loss; a rate bounds the queue like the wire's 200 ms.
    plain = netem.options_for(pb.LinkLimits(loss_pct=2, rate_kbit=2000, latency_ms=100))
    assert (plain.loss_pct, plain.gemodel, plain.rate_bytes) == (2, None, 250_000)
    assert plain.limit == 1000  # 250 kB/s * 0.3 s / 1500 B = 50 packets: tc's default floor
    assert netem.options_for(pb.LinkLimits(rate_kbit=1_000_000, latency_ms=100)).limit == 25_000


def test_latency_beyond_32_bit_ticks_goes_in_64_bit_nanoseconds() -> None:
    opts = netem.NetemOptions(latency_us=3_600_000_000, jitter_us=1_000)  # an hour: 5.6e10 ticks
    raw = netem.encode(opts, PSCHED)
    assert struct.unpack_from("<I", raw, 0)[0] == 0xFFFFFFFF
    assert raw[24:] == struct.pack("<HHq", 12, 10, 3_600_000_000_000) + struct.pack("<HHq", 12, 11, 1_000_000)


def test_backend_selection_on_this_kernel() -> None:
    if link_shaping.netem_available():
        pytest.fail("this test expects a kernel without sch_netem, like the project's machines")
    assert check_backend("auto") == "wire"
    assert check_backend("auto", seed=1) == "wire"
    assert check_backend("wire") == "wire"
    with pytest.raises(pb.KernelFeatureMissing, match=r"sch_netem.*modprobe sch_netem"):
        check_backend("netem")
    assert LinkShaper(None, "auto").backend == "wire"
    with pytest.raises(pb.PatchbayError, match="'tc' is not 'auto'"):
        check_backend("tc")


def test_backend_selection_on_a_kernel_with_netem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_shaping, "netem_support", lambda: NetemSupport(True, True, ""))
    assert check_backend("auto") == "netem"
    assert check_backend("auto", seed=3) == "wire"  # only the wire repeats draws per flow
    assert check_backend("netem", seed=3) == "netem"  # asked for: netem, seeded per qdisc
    assert LinkShaper(None, "auto").backend == "netem"
    assert LinkShaper(5, "auto").backend == "wire"
    assert LinkShaper(None).backend == "wire"  # the old call form keeps the wire
    monkeypatch.setattr(link_shaping, "netem_support", lambda: NetemSupport(True, False, ""))
    assert check_backend("auto") == "wire"
    with pytest.raises(pb.KernelFeatureMissing, match="ifb"):
        check_backend("netem")


async def pair(lab: pb.Lab) -> tuple[pb.Router, pb.Device, pb.Device, pb.Device]:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    a = await lab.add_device("a").iface("eth0", home).build()
    b = await lab.add_device("b").iface("eth0", home).build()
    return home, server, a, b


async def test_the_kernels_unknown_kind_becomes_kernel_feature_missing(
        lab: pb.Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The netem backend's real operations against this kernel: the messages are well-formed
    up to the kind lookup (device, parent, handle, attributes all accepted), and the kernel's
    'unknown qdisc kind' becomes KernelFeatureMissing naming sch_netem and the fix. A failed
    download leaves no IFB behind."""
    monkeypatch.setattr(link_shaping, "netem_support", lambda: NetemSupport(True, True, ""))
    home, _server, a, _b = await pair(lab)
    shaper = LinkShaper(None, "netem")
    limits = pb.LinkLimits(latency_ms=30, jitter_ms=5, loss_pct=1, loss_correlation_pct=25)
    dev, router = a._state, home._state  # type: ignore[attr-defined]
    iface = dev.ifaces["eth0"]

    def upload() -> None:
        shaper.set(("up", "a", "eth0"), dev.ns, iface.ifindex, "eth0", 1, None, limits)

    def download() -> None:
        shaper.set(("down", "a", "eth0"), router.ns, router.lan.ifindex, "lan", 1, iface.ip, limits)

    for attach, where in ((upload, "a: add qdisc netem on eth0"), (download, "home: add qdisc netem on pbn")):
        with pytest.raises(pb.KernelFeatureMissing) as err:
            await lab._check_open().run(attach)
        text = str(err.value)
        assert "sch_netem" in text and "modprobe sch_netem" in text and "link_backend='wire'" in text, text
        assert where in text and "Specified qdisc kind is unknown" in text, text
    links = await lab._check_open().run(router.ns.links)
    assert not [link for link in links if link.name.startswith("pbn")]
    assert shaper.stats(("down", "a", "eth0")) is None


def tbf_options(rate_bytes: int) -> bytes:
    """tc_tbf_qopt (rate and peakrate tc_ratespec with linklayer ethernet, limit, buffer in
    ticks, mtu) in TCA_TBF_PARMS: a qdisc this kernel has, standing in for netem."""
    ratespec = struct.pack("=BBHhHI", 0, 1, 0, 0, 0, rate_bytes)
    qopt = ratespec + struct.pack("=BBHhHI", 0, 1, 0, 0, 0, 0) + struct.pack("=III", 100_000, 1_000_000, 1514)
    return struct.pack("=HH", 4 + len(qopt), 1) + qopt


async def test_downloads_go_through_an_ifb_per_device_and_uploads_through_the_root(lab: pb.Lab) -> None:
    """Everything of the netem backend but the netem qdisc, on this kernel, with real packets:
    per-device downloads on the router's shared `lan` are told apart by the IPv4 filter and
    each reach their own IFB, whose root qdisc (tbf standing in for netem) sees exactly that
    device's packets and hands them back to `lan`; an upload's root qdisc is replaced in place
    and removed; removal leaves the router's `lan` as it was."""
    home, server, a, b = await pair(lab)
    router = home._state  # type: ignore[attr-defined]
    lan = router.lan.ifindex
    ifb_a, ifb_b = netem.IfbLink("pbn1", 1 << 24 | 1), netem.IfbLink("pbn2", 1 << 24 | 2)
    ip_a, ip_b = a._state.ifaces["eth0"].ip, b._state.ifaces["eth0"].ip  # type: ignore[attr-defined]

    def attach() -> None:
        ns = router.ns
        for n, (ifb, ip) in enumerate(((ifb_a, ip_a), (ifb_b, ip_b))):
            send_tc(ns.rtnl_fd, netem.shared_ops(ifb, tbf_options(125_000_000), kind="tbf"), ns.node)
            send_tc(ns.rtnl_fd, netem.shared_redirect(lan, "lan", 5 + n, ifb, ip, with_clsact=n == 0), ns.node)

    await lab._check_open().run(attach)
    filters = await lab._check_open().run(dump_filters, router.ns.rtnl_fd, lan, CLSACT_EGRESS, "home")
    assert sorted((f.prio, f.protocol, f.ipv4_dst, f.target_ifindex) for f in filters) == [
        (5, ETH_P_ALL, ip_a, ifb_a.ifindex), (6, ETH_P_ALL, ip_b, ifb_b.ifindex)]
    assert (await server.ping(ip_a, count=5, interval=0.01)).received == 5
    assert (await server.ping(ip_b, count=2, interval=0.01)).received == 2

    def counted() -> dict[int, int]:
        return {q.ifindex: q.packets for q in dump_qdiscs(router.ns.rtnl_fd, "home")
                if q.handle == netem.NETEM_HANDLE and q.kind == "tbf"}

    assert await lab._check_open().run(counted) == {ifb_a.ifindex: 5, ifb_b.ifindex: 2}

    def detach() -> None:
        ns = router.ns
        for n, ifb in enumerate((ifb_a, ifb_b)):
            send_tc(ns.rtnl_fd, netem.shared_removal(lan, "lan", 5 + n, ifb), ns.node)

    await lab._check_open().run(detach)
    assert await lab._check_open().run(dump_filters, router.ns.rtnl_fd, lan, CLSACT_EGRESS, "home") == []
    assert not [x for x in await lab._check_open().run(router.ns.links) if x.name.startswith("pbn")]
    assert (await server.ping(ip_a, count=2, interval=0.01)).received == 2

    # The upload: a root qdisc with our handle, replaced in place (a condition change), removed.
    dev = a._state  # type: ignore[attr-defined]
    eth0 = dev.ifaces["eth0"].ifindex

    def roots() -> list[tuple[int, str, int]]:
        return [(q.handle, q.kind, q.parent) for q in dump_qdiscs(dev.ns.rtnl_fd, "a", eth0)]

    for rate in (125_000, 250_000):
        await lab._check_open().run(send_tc, dev.ns.rtnl_fd, netem.root_ops(eth0, "eth0", tbf_options(rate),
                                                                          kind="tbf"), "a")
        assert await lab._check_open().run(roots) == [(netem.NETEM_HANDLE, "tbf", netem.TC_H_ROOT)]
    rate_now = next(q for q in await lab._check_open().run(dump_qdiscs, dev.ns.rtnl_fd, "a", eth0))
    assert struct.unpack_from("=I", rate_now.options, 4 + 8)[0] == 250_000  # tc_tbf_qopt.rate.rate, changed
    assert (await a.ping(server.ip, count=3, interval=0.01)).received == 3
    await lab._check_open().run(send_tc, dev.ns.rtnl_fd, netem.root_removal(eth0, "eth0", kind="tbf"), "a")
    assert netem.NETEM_HANDLE not in [h for h, _, _ in await lab._check_open().run(roots)]


async def test_the_netem_backend_end_to_end_with_tbf_in_netems_place(
        lab: pb.Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's own calls on a LinkShaper of the netem backend, with tbf (a rate) where netem
    would be: an upload becomes its interface's root, a download and the router's downlink
    each an IFB behind the filter on `lan`; conditions change in place, link_stats reads the
    qdisc's counters, removal leaves nothing; and the download really is shaped."""
    from tests.test_links import iperf_kbit

    monkeypatch.setattr(link_shaping, "netem_support", lambda: NetemSupport(True, True, ""))
    monkeypatch.setattr(netem, "QDISC_KIND", "tbf")
    monkeypatch.setattr(LinkShaper, "_netem_options", lambda self, key, limits: tbf_options(limits.rate_kbit * 125))
    lab._shaper = LinkShaper(None, "netem")  # type: ignore[attr-defined]
    home, server, a, b = await pair(lab)
    router, dev = home._state, a._state  # type: ignore[attr-defined]

    await a.set_link_condition("eth0", {"rate_kbit": 4000}, direction="both")
    await home.set_downlink_condition({"rate_kbit": 50_000})
    filters = await lab._check_open().run(dump_filters, router.ns.rtnl_fd, router.lan.ifindex, CLSACT_EGRESS, "home")
    ifbs = {x.name: x.ifindex for x in await lab._check_open().run(router.ns.links) if x.name.startswith("pbn")}
    assert sorted((f.ipv4_dst, f.target_ifindex) for f in filters if f.ipv4_dst) == [
        (dev.ifaces["eth0"].ip, ifbs["pbn1"])]
    assert [f.prio for f in filters if f.ipv4_dst is None] == [link_shaping.DOWNLINK_PRIO]
    uploads = await lab._check_open().run(dump_qdiscs, dev.ns.rtnl_fd, "a", dev.ifaces["eth0"].ifindex)
    assert [(q.kind, q.handle) for q in uploads] == [("tbf", netem.NETEM_HANDLE)]

    before = a.link_stats("eth0", "down")
    assert (await server.ping(a.ip, count=4, interval=0.01)).received == 4
    after = a.link_stats("eth0", "down")
    assert before is not None and after is not None and after.tx - before.tx == 4
    down = await iperf_kbit(a, server, seconds=2, reverse=True)
    # a's download: 4 Mbit/s through tbf (the 50 on the downlink does not bind). TCP over tbf's
    # short queue loses and retransmits, so 2 s of it land anywhere from ~2.5 Mbit/s up.
    assert 1500 <= down <= 4600, down
    assert await iperf_kbit(b, server, seconds=2, reverse=True) > 10_000  # b only meets the 50 Mbit/s downlink

    await a.set_link_condition("eth0", {"rate_kbit": 2000}, direction="down")  # in place: same IFB
    ifindex = ifbs["pbn1"]
    changed = await lab._check_open().run(dump_qdiscs, router.ns.rtnl_fd, "home", ifindex)
    assert struct.unpack_from("=I", changed[0].options, 4 + 8)[0] == 250_000  # 2 Mbit/s in bytes/s

    await a.set_link_condition("eth0", None, direction="both")
    await home.set_downlink_condition(None)
    assert await lab._check_open().run(dump_filters, router.ns.rtnl_fd, router.lan.ifindex, CLSACT_EGRESS,
                                       "home") == []
    assert not [x for x in await lab._check_open().run(router.ns.links) if x.name.startswith("pbn")]
    uploads = await lab._check_open().run(dump_qdiscs, dev.ns.rtnl_fd, "a", dev.ifaces["eth0"].ifindex)
    assert netem.NETEM_HANDLE not in [q.handle for q in uploads]
    assert a.link_stats("eth0") is None
    assert (await server.ping(a.ip, count=2, interval=0.01)).received == 2
