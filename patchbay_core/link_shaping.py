"""Link conditions in the lab: which wire shapes which traffic.

Attachment points (each a clsact egress filter redirecting into one wire):
- a device interface's upload: that interface's egress, every packet;
- a device interface's download: its router's `lan` egress, IPv4 packets to the device's
  address; its limits are the device's "down" condition stacked on the router's downlink.
  This is what reaches the device through its router; neighbours on the same LAN segment
  talk to each other directly (as on a switch), shaped only by the sender's upload;
- a router's downlink: its `lan` egress, every other packet (the lowest priority filter).
Setting a condition makes the wire (a TAP and a C thread) and the filter, changing it only
updates the wire's parameters (open connections keep flowing), removing it deletes the filter
and lets the wire send what it still holds. The shaped interface itself never changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import warnings
from dataclasses import dataclass, fields
from ipaddress import IPv4Address

from .errors import KernelFeatureMissing, PatchbayError, TopologyError
from .kernel.namespace import NetNs
from .kernel.wire import Wire, WireParams, WireStats
from .link import LinkCondition, LinkLimits
from .netops import CLSACT, Qdisc, Redirect
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


def check_backend(requested: str) -> str:
    """The link backend a lab uses. Today that is always the wire: it works on every kernel
    with TUN, and the netem backend is not built yet."""
    if requested not in ("auto", "wire", "netem"):
        raise PatchbayError(f"link_backend {requested!r} is not 'auto', 'wire' or 'netem'")
    if requested == "netem":
        if not netem_available():
            raise KernelFeatureMissing(
                "sch_netem (the kernel's network emulator qdisc)",
                "Install your distribution's kernel modules package (e.g. linux-modules-extra) and "
                "`modprobe sch_netem`, or use link_backend='wire' (or 'auto'): the userspace wire "
                "works on any kernel with /dev/net/tun.",
            )
        raise PatchbayError("the netem link backend is not built yet; use link_backend='wire' or 'auto'")
    return "wire"


@functools.cache
def netem_available() -> bool:
    """Whether this kernel can make a netem qdisc (tried in a throwaway namespace)."""
    from .doctor import run_checks

    return run_checks().has_netem


@dataclass
class Attachment:
    wire: Wire
    ns: NetNs
    ifindex: int
    label: str
    prio: int
    ipv4_dst: IPv4Address | None


class LinkShaper:
    """A lab's wires. All methods run on the lab's kernel thread."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._attachments: dict[tuple[str, ...], Attachment] = {}
        self._clsact: set[tuple[int, int]] = set()  # (namespace inode, ifindex)
        self._taps = 0

    def _wire_seed(self, key: tuple[str, ...]) -> int:
        if self._seed is None:
            return secrets.randbits(64)
        digest = hashlib.sha256(f"{self._seed}/{'/'.join(key)}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def set(self, key: tuple[str, ...], ns: NetNs, ifindex: int, label: str, prio: int,
            ipv4_dst: IPv4Address | None, limits: LinkLimits | None, mtu: int = 0) -> None:
        """Make the traffic at this attachment point meet `limits` (None: untouched)."""
        att = self._attachments.get(key)
        if limits is None:
            if att is not None:
                self._detach(key, att)
            return
        if att is not None and att.ipv4_dst != ipv4_dst:
            self._detach(key, att)  # the address it matches changed
            att = None
        if att is not None:
            att.wire.set(wire_params(limits))
            return
        if (ns.inode, ifindex) not in self._clsact:
            ns.apply([Qdisc(ifindex, label, "clsact", handle=0xFFFF0000, parent=CLSACT)])
            self._clsact.add((ns.inode, ifindex))
        self._taps += 1
        wire = Wire(ns.fd, f"pbw{self._taps}", ifindex, mtu, self._wire_seed(key), ns.node)
        try:
            wire.set(wire_params(limits))
            ns.apply([Redirect(ifindex, label, prio, wire.tap_ifindex, ipv4_dst)])
        except BaseException:
            wire.close()
            raise
        self._attachments[key] = Attachment(wire, ns, ifindex, label, prio, ipv4_dst)

    def _detach(self, key: tuple[str, ...], att: Attachment) -> None:
        del self._attachments[key]
        try:
            if not att.ns.closed:
                att.ns.apply([Redirect(att.ifindex, att.label, att.prio, ipv4_dst=att.ipv4_dst, add=False)])
        finally:
            att.wire.close()

    def stats(self, key: tuple[str, ...]) -> WireStats | None:
        att = self._attachments.get(key)
        return att.wire.stats() if att else None

    def drop_node(self, inode: int) -> None:
        """Forget every wire inside a namespace that is going away."""
        for key, att in list(self._attachments.items()):
            if att.ns.inode == inode:
                del self._attachments[key]
                att.wire.close()
        self._clsact = {(i, x) for i, x in self._clsact if i != inode}

    def close(self) -> None:
        for att in self._attachments.values():
            att.wire.close()  # wires hold sockets inside the namespaces: they must go first
        self._attachments.clear()
