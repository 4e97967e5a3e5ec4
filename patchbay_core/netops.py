"""Netlink operations as plain data.

`netplan` decides *what* a namespace needs (these values, no side effects); `kernel.rtnl`
turns a list of them into one rtnetlink batch. Each op can describe itself, so an error can
name exactly what failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class NsRef(Protocol):
    """Anything that names a network namespace by an open file descriptor."""

    @property
    def fd(self) -> int: ...


@dataclass(frozen=True, slots=True)
class VethPair:
    """A veth pair made by the sending namespace: `name` stays there, up (optionally enslaved
    to `master`); `peer_name` is created directly inside `peer_ns`, down: the kernel cannot
    open a veth end before both are linked, so the peer namespace brings it up itself."""

    name: str
    ifindex: int
    peer_name: str
    peer_ifindex: int
    peer_ns: NsRef
    master: int = 0
    mtu: int = 0
    peer_mtu: int = 0

    def describe(self) -> str:
        return f"create veth {self.name} (peer {self.peer_name})"


@dataclass(frozen=True, slots=True)
class Macvlan:
    """A macvlan in bridge mode on `lower` (an interface of the sending namespace), created
    directly inside `ns`, down (its namespace brings it up)."""

    name: str
    ifindex: int
    lower: int
    ns: NsRef
    mtu: int = 0
    mac: bytes | None = None

    def describe(self) -> str:
        return f"create macvlan {self.name}"


@dataclass(frozen=True, slots=True)
class Bridge:
    """A bridge without STP delay or multicast snooping (it floods like a plain switch)."""

    name: str
    ifindex: int
    mtu: int = 0

    def describe(self) -> str:
        return f"create bridge {self.name}"


@dataclass(frozen=True, slots=True)
class LinkSet:
    """Change a link: up (True/False/None = keep), mtu (0 = keep), master (None = keep, 0 = release)."""

    ifindex: int
    label: str
    up: bool | None = None
    mtu: int = 0
    master: int | None = None

    def describe(self) -> str:
        parts = []
        if self.up is not None:
            parts.append("up" if self.up else "down")
        if self.mtu:
            parts.append(f"mtu {self.mtu}")
        if self.master is not None:
            parts.append(f"master {self.master}" if self.master else "nomaster")
        return f"set link {self.label} {' '.join(parts)}".rstrip()


@dataclass(frozen=True, slots=True)
class LinkDel:
    ifindex: int
    label: str

    def describe(self) -> str:
        return f"delete link {self.label}"


@dataclass(frozen=True, slots=True)
class Addr:
    """An address; IPv6 ones skip duplicate address detection unless nodad=False."""

    ifindex: int
    label: str
    ip: IPAddress
    prefixlen: int
    add: bool = True
    nodad: bool = True

    def describe(self) -> str:
        return f"{'add' if self.add else 'delete'} address {self.ip}/{self.prefixlen} on {self.label}"


@dataclass(frozen=True, slots=True)
class Route:
    """A route; dst None is the default route. replace=True overwrites an existing one."""

    dst: IPNetwork | None
    via: IPAddress | None = None
    oif: int = 0
    label: str = ""
    metric: int = 0
    add: bool = True
    replace: bool = False
    v6: bool = False
    blackhole: bool = False

    def describe(self) -> str:
        verb = "delete" if not self.add else "replace" if self.replace else "add"
        dst = str(self.dst) if self.dst is not None else "default"
        text = f"{verb} {'blackhole ' if self.blackhole else ''}route {dst}"
        if self.via is not None:
            text += f" via {self.via}"
        if self.label:
            text += f" dev {self.label}"
        return text


@dataclass(frozen=True, slots=True)
class Qdisc:
    """Add (or, add=False, delete) a qdisc; `options` is its raw TCA_OPTIONS payload."""

    ifindex: int
    label: str
    kind: str
    handle: int = 0
    parent: int = 0
    options: bytes = b""
    add: bool = True
    replace: bool = False

    def describe(self) -> str:
        return f"{'add' if self.add else 'delete'} qdisc {self.kind} on {self.label}"


CLSACT = 0xFFFFFFF1
CLSACT_EGRESS = 0xFFFFFFF3


@dataclass(frozen=True, slots=True)
class Redirect:
    """A clsact egress filter of priority `prio` on `ifindex` sending packets (all, or those to
    `ipv4_dst`, and to `ipv6_dst`) to `target_ifindex`; add=False removes that priority's
    filters. What a wire sends back out (PB_WIRE_MARK) is never redirected."""

    ifindex: int
    label: str
    prio: int
    target_ifindex: int = 0
    ipv4_dst: IPv4Address | None = None
    add: bool = True
    ipv6_dst: IPv6Address | None = None

    def describe(self) -> str:
        what = " ".join(f"to {a}" for a in (self.ipv4_dst, self.ipv6_dst) if a) or "all"
        return f"{'add' if self.add else 'delete'} redirect ({what}, prio {self.prio}) on {self.label}"


NetOp = VethPair | Macvlan | Bridge | LinkSet | LinkDel | Addr | Route | Qdisc | Redirect
