"""Link conditions in the lab: what shapes which traffic, on the wire or on netem.

Attachment points:
- a device interface's upload: that interface's egress, every packet;
- a device interface's download: its router's `lan` egress, IPv4 packets to the device's
  address; its limits are the device's "down" condition stacked on the router's downlink.
  This is what reaches the device through its router; neighbours on the same LAN segment
  talk to each other directly (as on a switch), shaped only by the sender's upload;
- a router's downlink: its `lan` egress, every other packet (the lowest priority filter);
- a region link: that link's interface, every packet.

The wire (`link_backend="wire"`, and "auto" without netem or with a seed): each attachment is
a clsact egress filter redirecting into a TAP read by a C thread. Setting a condition makes
the wire and the filter, changing it only updates the wire's parameters (open connections
keep flowing), removing it deletes the filter and lets the wire send what it still holds.
The shaped interface itself never changes.

netem (`link_backend="netem"`, and "auto" on kernels with sch_netem): an attachment that is
its interface's only one gets a netem root qdisc; those sharing a router's `lan` get the
wire's filter, redirecting into an IFB whose root is their netem (see `netem`). Changing a
condition changes the qdisc in place; removing it deletes the qdisc (and drops what it held).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import warnings
from dataclasses import dataclass, fields
from ipaddress import IPv4Address, IPv6Address

from . import netem, netplan
from .errors import KernelFeatureMissing, PatchbayError, TopologyError
from .kernel.namespace import NetNs
from .kernel.wire import Wire, WireParams, WireStats, dump_qdiscs, send_tc
from .link import LinkCondition, LinkLimits
from .netops import CLSACT, LinkDel, Qdisc, Redirect
from .plugins import lookup_preset

DOWNLINK_PRIO = 50000  # below every per-device filter
QUEUE_MS = 200  # the bottleneck queue of a rate-limited link, in time at its rate
PERCENT_FIELDS = ("loss_pct", "loss_correlation_pct", "reorder_pct", "duplicate_pct", "corrupt_pct")


def limits_of(condition: LinkCondition | str | dict | LinkLimits | None, node: str, field: str) -> LinkLimits | None:
    """The limits a condition stands for (presets through the plugin hook), checked; None when
    the link is clean."""
    if condition is None:
        return None
    try:
        parsed = LinkCondition.parse(condition)  # type: ignore[arg-type]
    except ValueError as exc:
        raise TopologyError(str(exc), node=node, field=field) from None
    limits = parsed.limits
    if limits is None:
        preset = lookup_preset("link", parsed.name or "", node=node, field=field)
        assert isinstance(preset, LinkLimits)
        limits = preset
    check(limits, node, field)
    return None if limits.is_clean else limits


def check(limits: LinkLimits, node: str, field: str) -> None:
    for f in fields(LinkLimits):
        value = getattr(limits, f.name)
        if value < 0:
            raise TopologyError(f"{f.name} {value} is negative", node=node, field=field)
        if f.name in PERCENT_FIELDS and value > 100:
            raise TopologyError(f"{f.name} {value} is over 100 %", node=node, field=field)
    if limits.latency_ms > 3_600_000 or limits.jitter_ms > 3_600_000:
        raise TopologyError("latency and jitter are at most an hour", node=node, field=field)


def stack(a: LinkLimits | None, b: LinkLimits | None) -> LinkLimits | None:
    """Two impairments one after the other: delays add, losses compound, the slower rate wins."""
    if a is None or b is None:
        return a or b

    def both(x: float, y: float) -> float:
        return 100.0 - (100.0 - x) * (100.0 - y) / 100.0

    rates = [r for r in (a.rate_kbit, b.rate_kbit) if r]
    return LinkLimits(
        rate_kbit=min(rates) if rates else 0,
        loss_pct=both(a.loss_pct, b.loss_pct),
        loss_correlation_pct=max(a.loss_correlation_pct, b.loss_correlation_pct),
        latency_ms=a.latency_ms + b.latency_ms,
        jitter_ms=a.jitter_ms + b.jitter_ms,
        reorder_pct=both(a.reorder_pct, b.reorder_pct),
        duplicate_pct=both(a.duplicate_pct, b.duplicate_pct),
        corrupt_pct=both(a.corrupt_pct, b.corrupt_pct),
    )


def wire_params(limits: LinkLimits) -> WireParams:
    def ppm(pct: float) -> int:
        return round(pct * 10_000)

    return WireParams(
        latency_us=limits.latency_ms * 1000, jitter_us=limits.jitter_ms * 1000,
        loss_ppm=ppm(limits.loss_pct), loss_corr_ppm=ppm(limits.loss_correlation_pct),
        reorder_ppm=ppm(limits.reorder_pct), duplicate_ppm=ppm(limits.duplicate_pct),
        corrupt_ppm=ppm(limits.corrupt_pct), queue_ms=QUEUE_MS, rate_bps=limits.rate_kbit * 1000,
    )


# PATCHBAY_NETWORK_EMULATION: the Freenet NAT test backend's profile names.
EMULATION_ENV = "PATCHBAY_NETWORK_EMULATION"
EMULATION_PROFILES = {"lan": "lan-emulation", "regional": "regional", "intercontinental": "intercontinental",
                      "high_latency": "high-latency", "challenging": "challenging"}
LAN_EMULATION = LinkLimits(latency_ms=1, jitter_ms=1)  # "lan" there means 1 +- 1 ms, not a clean link


def emulation_from_env() -> LinkLimits | None:
    """The profile PATCHBAY_NETWORK_EMULATION asks for every device link without its own."""
    value = os.environ.get(EMULATION_ENV, "").strip().lower().replace("-", "_")
    if not value:
        return None
    if value not in EMULATION_PROFILES:
        warnings.warn(f"{EMULATION_ENV}={value!r} is not a profile; use one of {', '.join(EMULATION_PROFILES)}",
                      stacklevel=2)
        return None
    if value == "lan":
        return LAN_EMULATION
    preset = lookup_preset("link", EMULATION_PROFILES[value], field=EMULATION_ENV)
    assert isinstance(preset, LinkLimits)
    return preset


def check_backend(requested: str, seed: int | None = None) -> str:
    """The link backend a lab uses: "wire" or "netem".

    "auto" takes netem where the kernel has sch_netem (and IFB, for downloads), unless a seed
    is given: only the wire makes every flow's draws repeat whatever else crosses the link.
    "netem" on a kernel without it raises KernelFeatureMissing naming what to install."""
    if requested not in ("auto", "wire", "netem"):
        raise PatchbayError(f"link_backend {requested!r} is not 'auto', 'wire' or 'netem'")
    if requested == "wire":
        return "wire"
    support = netem_support()
    if requested == "netem":
        if not support.netem:
            raise KernelFeatureMissing(
                "sch_netem (the kernel's network emulator qdisc)",
                "Install your distribution's kernel modules package (e.g. linux-modules-extra) and "
                "`modprobe sch_netem`, or use link_backend='wire' (or 'auto'): the userspace wire "
                "works on any kernel with /dev/net/tun.",
            )
        if not support.ifb:
            raise KernelFeatureMissing(
                "ifb (intermediate functional block devices: the netem backend shapes downloads through them)",
                "`modprobe ifb` (CONFIG_IFB), or use link_backend='wire' (or 'auto').",
            )
        return "netem"
    if seed is not None:
        return "wire"
    return "netem" if support.usable else "wire"


@dataclass(frozen=True)
class NetemSupport:
    netem: bool
    ifb: bool
    detail: str  # what the probe saw, for the doctor

    @property
    def usable(self) -> bool:
        return self.netem and self.ifb


@functools.cache
def netem_support() -> NetemSupport:
    """Whether this kernel can make a netem qdisc and an IFB (tried in a throwaway namespace on
    a short-lived thread, once per process)."""
    from .doctor import probe_netem

    return probe_netem()


def netem_available() -> bool:
    """Whether the netem backend can run here."""
    return netem_support().usable


IPAddress = IPv4Address | IPv6Address
Destinations = tuple[IPAddress, ...]  # empty: every packet


def destinations(dst: IPAddress | Destinations | None) -> Destinations:
    if dst is None:
        return ()
    return tuple(dst) if isinstance(dst, tuple) else (dst,)


@dataclass
class Attachment:
    wire: Wire
    ns: NetNs
    ifindex: int
    label: str
    prio: int
    dsts: Destinations


@dataclass
class NetemAttachment:
    ns: NetNs
    ifindex: int
    label: str
    prio: int
    dsts: Destinations
    ifb: netem.IfbLink | None  # None: netem is the interface's root

    @property
    def qdisc_ifindex(self) -> int:
        return self.ifb.ifindex if self.ifb is not None else self.ifindex


# Attachments of these kinds share their interface (a router's `lan`) with others of theirs and
# are told apart by filter priority; every other kind (an upload, a region link) is its
# interface's only one. The kind is the first part of the key `lab` gives (`("down", dev, iface)`).
SHARED_KINDS = ("down", "downlink")
IFB_IFINDEX_BASE = 1 << 24  # far above the indexes a lab gives its interfaces


class LinkShaper:
    """A lab's link conditions. All methods run on the lab's kernel thread.

    `backend` is "wire", "netem" or "auto" (resolved with `check_backend` when first needed);
    `LinkShaper(seed)` alone keeps the wire."""

    def __init__(self, seed: int | None, backend: str = "wire") -> None:
        self._seed = seed
        self._requested = backend
        self._backend: str | None = None
        self._attachments: dict[tuple[str, ...], Attachment | NetemAttachment] = {}
        self._clsact: set[tuple[int, int]] = set()  # (namespace inode, ifindex)
        self._taps = 0
        self._ifbs = 0

    @property
    def backend(self) -> str:
        if self._backend is None:
            self._backend = check_backend(self._requested, self._seed)
        return self._backend

    def _wire_seed(self, key: tuple[str, ...]) -> int:
        if self._seed is None:
            return secrets.randbits(64)
        digest = hashlib.sha256(f"{self._seed}/{'/'.join(key)}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def set(self, key: tuple[str, ...], ns: NetNs, ifindex: int, label: str, prio: int,
            dst: IPAddress | Destinations | None, limits: LinkLimits | None, mtu: int = 0) -> None:
        """Make the traffic at this attachment point meet `limits` (None: untouched). `dst`:
        the destination address(es) whose packets this is (a device's IPv4 and IPv6 on its
        router's LAN), or None for every packet."""
        dsts = destinations(dst)
        att = self._attachments.get(key)
        if limits is None:
            if att is not None:
                self._detach(key, att)
            return
        if att is not None and att.dsts != dsts:
            self._detach(key, att)  # the addresses it matches changed
            att = None
        if self.backend == "netem":
            assert att is None or isinstance(att, NetemAttachment)
            self._set_netem(key, att, ns, ifindex, label, prio, dsts, limits)
            return
        if isinstance(att, Attachment):
            att.wire.set(wire_params(limits))
            return
        self._ensure_clsact(ns, ifindex, label)
        self._taps += 1
        wire = Wire(ns.fd, f"pbw{self._taps}", ifindex, mtu, self._wire_seed(key), ns.node)
        try:
            wire.set(wire_params(limits))
            ns.apply(netplan.redirect_ops(ifindex, label, prio, wire.tap_ifindex, dsts))
        except BaseException:
            wire.close()
            raise
        self._attachments[key] = Attachment(wire, ns, ifindex, label, prio, dsts)

    def _ensure_clsact(self, ns: NetNs, ifindex: int, label: str) -> None:
        if (ns.inode, ifindex) not in self._clsact:
            ns.apply([Qdisc(ifindex, label, "clsact", handle=0xFFFF0000, parent=CLSACT)])
            self._clsact.add((ns.inode, ifindex))

    def _netem_options(self, key: tuple[str, ...], limits: LinkLimits) -> bytes:
        # netem's generator is one per qdisc: a seed repeats its draws for the same traffic only.
        seed = self._wire_seed(key) if self._seed is not None else None
        return netem.encode(netem.options_for(limits, seed), netem.psched())

    def _set_netem(self, key: tuple[str, ...], att: NetemAttachment | None, ns: NetNs, ifindex: int, label: str,
                   prio: int, dsts: Destinations, limits: LinkLimits) -> None:
        options = self._netem_options(key, limits)
        if att is not None:
            # A change in place: netem keeps what it holds (connections keep flowing).
            send_tc(ns.rtnl_fd, [netem.netem_qdisc(att.qdisc_ifindex, att.ifb.name if att.ifb else label,
                                                   options)], ns.node)
            return
        if key[0] not in SHARED_KINDS:
            send_tc(ns.rtnl_fd, netem.root_ops(ifindex, label, options), ns.node)
            self._attachments[key] = NetemAttachment(ns, ifindex, label, prio, dsts, None)
            return
        self._ifbs += 1
        ifb = netem.IfbLink(f"pbn{self._ifbs}", IFB_IFINDEX_BASE + self._ifbs)
        try:
            send_tc(ns.rtnl_fd, netem.shared_ops(ifb, options), ns.node)
        except BaseException:
            if not ns.closed:
                with contextlib.suppress(PatchbayError):
                    ns.apply([LinkDel(ifb.ifindex, ifb.name)])
            raise
        with_clsact = (ns.inode, ifindex) not in self._clsact
        try:
            send_tc(ns.rtnl_fd, netem.shared_redirect(ifindex, label, prio, ifb, dsts, with_clsact), ns.node)
        except BaseException:
            with contextlib.suppress(PatchbayError):
                ns.apply([LinkDel(ifb.ifindex, ifb.name)])
            raise
        self._clsact.add((ns.inode, ifindex))
        self._attachments[key] = NetemAttachment(ns, ifindex, label, prio, dsts, ifb)

    def _detach(self, key: tuple[str, ...], att: Attachment | NetemAttachment) -> None:
        del self._attachments[key]
        if isinstance(att, NetemAttachment):
            # netem drops what it still holds when it goes (the wire sends it).
            if not att.ns.closed:
                if att.ifb is None:
                    send_tc(att.ns.rtnl_fd, netem.root_removal(att.ifindex, att.label), att.ns.node)
                else:
                    send_tc(att.ns.rtnl_fd, netem.shared_removal(att.ifindex, att.label, att.prio, att.ifb),
                            att.ns.node)
            return
        try:
            if not att.ns.closed:
                att.ns.apply([Redirect(att.ifindex, att.label, att.prio, add=False)])  # every filter of it
        finally:
            att.wire.close()

    def stats(self, key: tuple[str, ...]) -> WireStats | None:
        """The wire's counters; on netem, what the qdisc counts (sent, dropped, reordered as
        requeues, queued) in the same shape."""
        att = self._attachments.get(key)
        if att is None:
            return None
        if isinstance(att, Attachment):
            return att.wire.stats()
        found = [q for q in dump_qdiscs(att.ns.rtnl_fd, att.ns.node, att.qdisc_ifindex)
                 if q.kind == netem.QDISC_KIND and q.handle == netem.NETEM_HANDLE]
        if not found:
            return None
        q = found[0]
        return WireStats(rx=q.packets + q.drops + q.qlen, tx=q.packets, dropped_loss=q.drops, dropped_queue=0,
                         duplicated=0, corrupted=0, reordered=q.requeues, send_errors=0, queued=q.qlen)

    def drop_node(self, inode: int) -> None:
        """Forget every attachment inside a namespace that is going away (its qdiscs and IFBs
        go with it)."""
        for key, att in list(self._attachments.items()):
            if att.ns.inode == inode:
                del self._attachments[key]
                if isinstance(att, Attachment):
                    att.wire.close()
        self._clsact = {(i, x) for i, x in self._clsact if i != inode}

    def close(self) -> None:
        for att in self._attachments.values():
            if isinstance(att, Attachment):
                att.wire.close()  # wires hold sockets inside the namespaces: they must go first
        self._attachments.clear()
