"""The address plan and the wiring of a lab, computed without touching the kernel.

Everything here is pure: given names, order and settings it yields addresses, interface names,
sysctls and the netlink operations (`netops`) each namespace needs. `lab.py` hands those to
the kernel layer. Deterministic: the same lab description gives the same plan.

Plan (IPv4):
- IX (the lab's "internet"): 198.18.0.0/24 on a bridge in the IX namespace, which is the
  gateway (.1) and routes every public downstream pool; routers get .10, .11, ...
  The IX namespace is also the lab's wiring closet: it holds the lower end of every router's
  LAN, on which devices and chained routers are macvlans (see `Lan`).
- Public downstream pools: 198.18.N.0/24 (N = 1, 2, ...; then 198.19.M.0/24).
- Private downstream pools: 10.0.N.0/24 (N = 1, 2, ...; then 10.1.0.0/24, ...).
- In every pool the router is the first host (.1); devices and chained routers follow.

Plan (IPv6, for routers with IpSupport DUAL_STACK or V6_ONLY and what plugs into them):
- IX: 2001:db8::/64 (gateway ::1; routers get the same host numbers as on v4: ::a, ::b, ...).
- Public downstream pools: 2001:db8:1:N::/64 (GUA-like); private ones: fd10:0:0:N::/64 (ULA).
  Both are routed inside the lab (a lab is one site) unless the router translates (NPTv6,
  masquerade); NPTv6 maps a private pool onto 2001:db8:2:M::/64 (see `nptv6.py`).
- Link-local addresses are assigned, not derived from MACs: the router's LAN side is fe80::1,
  every other interface fe80::<its host number> (unique on each link, the same every run).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .errors import TopologyError
from .netops import Addr, Bridge, LinkSet, Macvlan, NetOp, NsRef, Redirect, Route, VethPair

IX_CIDR = IPv4Network("198.18.0.0/24")
IX_GATEWAY = IPv4Address("198.18.0.1")
IX6_CIDR = IPv6Network("2001:db8::/64")
IX6_GATEWAY = IPv6Address("2001:db8::1")
LINK_LOCAL = IPv6Network("fe80::/64")
ROUTER_LINK_LOCAL = IPv6Address("fe80::1")
IX_FIRST_ROUTER = 10
IX_BRIDGE = "br-ix"
LAN_IFACE = "lan"
DEFAULT_MTU = 1500
MAX_MTU = 65535  # the veth maximum
LOOPBACK_IFINDEX = 1
IFNAMSIZ = 16  # including the terminating NUL: names have at most 15 bytes

_PUBLIC_BASE = int(IPv4Address("198.18.0.0"))
_PRIVATE_BASE = int(IPv4Address("10.0.0.0"))
_CGNAT_BASE = int(IPv4Address("100.64.0.0"))
_PUBLIC_POOLS = 511  # 198.18.1.0/24 .. 198.19.255.0/24
_PRIVATE_POOLS = 65535  # 10.0.1.0/24 .. 10.255.255.0/24
_CGNAT_POOLS = 16383  # 100.64.1.0/24 .. 100.127.255.0/24 (RFC 6598 shared address space)


def public_pool_cidr(n: int) -> IPv4Network:
    """The n-th public downstream pool (n >= 1)."""
    if not 1 <= n <= _PUBLIC_POOLS:
        raise IndexError(n)
    return IPv4Network((_PUBLIC_BASE + (n << 8), 24))


def private_pool_cidr(n: int) -> IPv4Network:
    """The n-th private downstream pool (n >= 1)."""
    if not 1 <= n <= _PRIVATE_POOLS:
        raise IndexError(n)
    return IPv4Network((_PRIVATE_BASE + (n << 8), 24))


def cgnat_pool_cidr(n: int) -> IPv4Network:
    """The n-th carrier-grade NAT customer pool (n >= 1), in RFC 6598 space."""
    if not 1 <= n <= _CGNAT_POOLS:
        raise IndexError(n)
    return IPv4Network((_CGNAT_BASE + (n << 8), 24))


def public6_pool_cidr(n: int) -> IPv6Network:
    """The n-th public IPv6 downstream pool: 2001:db8:1:n::/64."""
    if not 1 <= n <= 0xFFFF:
        raise IndexError(n)
    return IPv6Network((int(IPv6Address("2001:db8:1::")) + (n << 64), 64))


def private6_pool_cidr(n: int) -> IPv6Network:
    """The n-th private (ULA) IPv6 downstream pool: fd10:0:0:n::/64."""
    if not 1 <= n <= 0xFFFF:
        raise IndexError(n)
    return IPv6Network((int(IPv6Address("fd10::")) + (n << 64), 64))


def link_local(host: int) -> IPv6Address:
    return LINK_LOCAL.network_address + host


def host_number(ip: IPv4Address | IPv6Address, subnet: IPv4Network | IPv6Network) -> int:
    return int(ip) - int(subnet.network_address)


def check_ifname(name: str, *, node: str, field: str) -> None:
    """Refuse names the kernel would refuse, before anything is built."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise TopologyError(
            f"interface name {name!r} has {len(raw)} bytes; Linux allows 1 to {IFNAMSIZ - 1}",
            node=node, field=field,
        )
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise TopologyError(
            f"interface name {name!r} may not be '.', '..' or contain '/', ':' or whitespace",
            node=node, field=field,
        )


class PoolExhausted(Exception):
    pass


@dataclass
class AddressPool:
    """Hosts of one subnet (IPv4 or IPv6) handed out in order; the first host is the gateway."""

    cidr: IPv4Network | IPv6Network
    _next: int = 2
    _free: list[int] = field(default_factory=list)

    @property
    def gateway(self) -> IPv4Address | IPv6Address:
        return self.cidr.network_address + 1

    @property
    def prefixlen(self) -> int:
        return self.cidr.prefixlen

    @classmethod
    def starting_at(cls, cidr: IPv4Network | IPv6Network, first_host: int) -> AddressPool:
        """A pool whose first handed-out host is `first_host` (e.g. routers from .10 on the IX)."""
        return cls(cidr, first_host)

    def allocate(self) -> IPv4Address | IPv6Address:
        if self._free:
            return self.cidr.network_address + self._free.pop(0)
        # The last address of the subnet is the broadcast address.
        if self._next >= self.cidr.num_addresses - 1:
            raise PoolExhausted(str(self.cidr))
        offset = self._next
        self._next += 1
        return self.cidr.network_address + offset

    def release(self, ip: IPv4Address | IPv6Address) -> None:
        offset = int(ip) - int(self.cidr.network_address)
        if 0 < offset < self._next and offset not in self._free:
            self._free.append(offset)
            self._free.sort()


@dataclass
class PoolCounters:
    """Which downstream pool the next router gets; each kind of pool is counted apart."""

    counts: dict[str, int] = field(default_factory=dict)

    _KINDS = {"public": public_pool_cidr, "private": private_pool_cidr, "cgnat": cgnat_pool_cidr,
              "public6": public6_pool_cidr, "private6": private6_pool_cidr}

    def next_cidr(self, kind: str, taken: Collection[IPv4Network | IPv6Network] = ()) -> IPv4Network | IPv6Network:
        """The next pool of `kind` that overlaps none of `taken` (IndexError when used up)."""
        n = self.counts.get(kind, 0)
        # As integer spans: a lab of N routers checks N pools for each new one.
        spans = [(t.version, int(t.network_address), int(t.broadcast_address)) for t in taken]
        while True:
            n += 1
            cidr = self._KINDS[kind](n)
            first, last = int(cidr.network_address), int(cidr.broadcast_address)
            if not any(v == cidr.version and lo <= last and first <= hi for v, lo, hi in spans):
                self.counts[kind] = n
                return cidr

    def release(self, cidr: IPv4Network | IPv6Network) -> None:
        """Give back the most recent pool (a build that failed) so numbering stays dense."""
        for kind, make in self._KINDS.items():
            n = self.counts.get(kind, 0)
            if n and cidr == make(n):
                self.counts[kind] = n - 1


def ix_router_slots() -> AddressPool:
    """Addresses of routers on the IX: 198.18.0.10 and up (.1 is the IX gateway)."""
    return AddressPool.starting_at(IX_CIDR, IX_FIRST_ROUTER)


def ix6_address(ip: IPv4Address) -> IPv6Address:
    """A router's IX address on v6: the same host number as its v4 one."""
    return IX6_CIDR.network_address + host_number(ip, IX_CIDR)


# ---- sysctls -----------------------------------------------------------------------------


def base_sysctls(ping_group_range: str) -> dict[str, str]:
    """Every namespace: ICMP echo sockets usable without raw sockets (our `ping`, and users').

    Labs are IPv4 for now: interfaces made later get no IPv6 (no link-local address, DAD or
    MLD work at link-up, which is a good part of what link-up costs); `lo` keeps ::1.
    """
    return {
        "net.ipv4.ping_group_range": ping_group_range,
        "net.ipv6.conf.default.disable_ipv6": "1",
        # An address replaced on an interface (renew_ip) must not take its secondaries along.
        "net.ipv4.conf.all.promote_secondaries": "1",
    }


def forwarding_sysctls(ping_group_range: str) -> dict[str, str]:
    """Routers forward, and drop nothing for arriving on an unexpected interface (new
    namespaces may inherit a strict rp_filter from the host)."""
    return {
        **base_sysctls(ping_group_range),
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
    }


def ipv6_sysctls(*, forwarding: bool, dad: bool, accept_ra: bool) -> dict[str, str]:
    """A namespace whose interfaces (made from now on) carry IPv6. Link-local addresses are
    ours to assign (addr_gen_mode 1), DAD runs only when the lab asks for it, and only hosts in
    a lab that provisions by router advertisements listen to them (solicited at once)."""
    values = {
        "net.ipv6.conf.default.disable_ipv6": "0",
        "net.ipv6.conf.default.addr_gen_mode": "1",
        "net.ipv6.conf.default.accept_dad": "1" if dad else "0",
        "net.ipv6.conf.default.accept_ra": "1" if accept_ra else "0",
        "net.ipv6.conf.all.accept_ra": "1" if accept_ra else "0",
        "net.ipv6.conf.all.forwarding": "1" if forwarding else "0",
        # link_down/link_up keep static addresses, as IPv4 does (the kernel's default flushes them).
        "net.ipv6.conf.all.keep_addr_on_down": "1",
    }
    if accept_ra:
        values["net.ipv6.conf.default.router_solicitation_delay"] = "0"
    return values


def iface_ipv6_sysctls(iface: str, *, dad: bool) -> dict[str, str]:
    """IPv6 on one interface that exists already (the IX bridge, made before any v6 router)."""
    return {f"net.ipv6.conf.{iface}.addr_gen_mode": "1", f"net.ipv6.conf.{iface}.accept_dad": "1" if dad else "0",
            f"net.ipv6.conf.{iface}.disable_ipv6": "0", "net.ipv6.conf.all.forwarding": "1"}


IX_BRIDGE_NO_NETFILTER = {
    "net.bridge.bridge-nf-call-iptables": "0",
    "net.bridge.bridge-nf-call-ip6tables": "0",
    "net.bridge.bridge-nf-call-arptables": "0",
}


def ix_sysctls(ping_group_range: str) -> dict[str, str]:
    """The IX forwards like a router, and never tells a router to go around it: routers share
    its subnet, but traffic between them is meant to cross the IX (and later its region links)."""
    return {
        **forwarding_sysctls(ping_group_range),
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
    }


# ---- operations --------------------------------------------------------------------------


def loopback_up() -> LinkSet:
    return LinkSet(LOOPBACK_IFINDEX, "lo", up=True)


def ix_ops(bridge_ifindex: int) -> list[NetOp]:
    """The IX namespace: a bridge every top-level router plugs into, with the gateway address."""
    return [
        loopback_up(),
        Bridge(IX_BRIDGE, bridge_ifindex),
        Addr(bridge_ifindex, IX_BRIDGE, IX_GATEWAY, IX_CIDR.prefixlen),
    ]


def ix6_ops(bridge_ifindex: int, *, dad: bool) -> list[NetOp]:
    """IPv6 on the IX bridge (once the first IPv6 router arrives)."""
    return [Addr(bridge_ifindex, IX_BRIDGE, ROUTER_LINK_LOCAL, 64, nodad=not dad),
            Addr(bridge_ifindex, IX_BRIDGE, IX6_GATEWAY, IX6_CIDR.prefixlen, nodad=not dad)]


@dataclass(frozen=True)
class V6Plug:
    """The IPv6 side of an interface: its global (or ULA) address, its subnet, its gateway
    (global, and the router's link-local fe80::1 for router advertisements)."""

    ip: IPv6Address
    subnet: IPv6Network
    gateway: IPv6Address
    dad: bool = False

    @property
    def ll(self) -> IPv6Address:
        return link_local(host_number(self.ip, self.subnet))

    def addr_ops(self, ifindex: int, iface: str) -> list[NetOp]:
        return [Addr(ifindex, iface, self.ll, 64, nodad=not self.dad),
                Addr(ifindex, iface, self.ip, self.subnet.prefixlen, nodad=not self.dad)]

    def default_route(self, ifindex: int, iface: str) -> Route:
        return Route(None, self.gateway, oif=ifindex, label=iface, v6=True, replace=True)


@dataclass(frozen=True)
class IxPort:
    """A top-level router's uplink: a veth from the IX bridge (port `port_name` in the IX) to
    the router's "ix" interface."""

    port_name: str
    port_ifindex: int
    bridge_ifindex: int
    iface: str
    ifindex: int
    ip: IPv4Address
    mtu: int = 0
    v6: V6Plug | None = None

    @property
    def subnet(self) -> IPv4Network:
        return IX_CIDR

    @property
    def gateway(self) -> IPv4Address:
        return IX_GATEWAY

    def ix_ops(self, node: NsRef) -> list[NetOp]:
        return [
            VethPair(self.port_name, self.port_ifindex, self.iface, self.ifindex, node,
                     master=self.bridge_ifindex, mtu=self.mtu, peer_mtu=self.mtu)
        ]

    def addr_ops(self) -> list[NetOp]:
        ops: list[NetOp] = [Addr(self.ifindex, self.iface, self.ip, self.subnet.prefixlen)]
        return ops + (self.v6.addr_ops(self.ifindex, self.iface) if self.v6 else [])

    def default_routes(self, *, v6: bool = True) -> list[Route]:
        routes = [Route(None, self.gateway, oif=self.ifindex, label=self.iface, replace=True)]
        return routes + ([self.v6.default_route(self.ifindex, self.iface)] if self.v6 and v6 else [])

    def node_ops(self, *, default_route: bool) -> list[NetOp]:
        return [LinkSet(self.ifindex, self.iface, up=True), *self.addr_ops(),
                *(self.default_routes() if default_route else [])]


@dataclass(frozen=True)
class LanPlug:
    """An interface on a router's LAN (a device's, or a chained router's "wan"): a macvlan on
    the LAN's lower end in the IX, created directly in the node's namespace."""

    iface: str
    ifindex: int
    lower_ifindex: int
    ip: IPv4Address | None  # None on an IPv6-only LAN
    subnet: IPv4Network | None
    gateway: IPv4Address | None
    mtu: int = 0
    v6: V6Plug | None = None

    def ix_ops(self, node: NsRef) -> list[NetOp]:
        return [Macvlan(self.iface, self.ifindex, self.lower_ifindex, node, mtu=self.mtu or DEFAULT_MTU)]

    def addr_ops(self) -> list[NetOp]:
        ops: list[NetOp] = []
        if self.ip is not None and self.subnet is not None:
            ops.append(Addr(self.ifindex, self.iface, self.ip, self.subnet.prefixlen))
        return ops + (self.v6.addr_ops(self.ifindex, self.iface) if self.v6 else [])

    def default_routes(self, *, v6: bool = True) -> list[Route]:
        """The default routes through this interface (v6: the static one, not an RA's)."""
        routes = []
        if self.gateway is not None:
            routes.append(Route(None, self.gateway, oif=self.ifindex, label=self.iface, replace=True))
        if self.v6 is not None and v6:
            routes.append(self.v6.default_route(self.ifindex, self.iface))
        return routes

    def node_ops(self, *, default_route: bool, v6_route: bool = True) -> list[NetOp]:
        return [LinkSet(self.ifindex, self.iface, up=True), *self.addr_ops(),
                *(self.default_routes(v6=v6_route) if default_route else [])]


Uplink = IxPort | LanPlug


@dataclass(frozen=True)
class Lan:
    """A router's downstream L2 segment, made without a bridge (deleting a bridge costs an
    rcu_barrier, ~20 ms each, serialized): the router's "lan" interface is a veth whose other
    end, `lower_name` in the IX, is the lower device of every macvlan plugged into this LAN.
    Macvlans in bridge mode reach each other directly and the router through the lower."""

    lower_name: str
    lower_ifindex: int
    ifindex: int
    pool: AddressPool | None  # IPv4; None on an IPv6-only LAN
    mtu: int = 0
    pool6: AddressPool | None = None
    dad: bool = False

    @property
    def iface(self) -> str:
        return LAN_IFACE

    def ix_ops(self, router: NsRef) -> list[NetOp]:
        # The lower never limits what its macvlans carry; the router's "lan" MTU does.
        return [VethPair(self.lower_name, self.lower_ifindex, self.iface, self.ifindex, router,
                         mtu=MAX_MTU, peer_mtu=self.mtu)]

    def router_ops(self) -> list[NetOp]:
        ops: list[NetOp] = [LinkSet(self.ifindex, self.iface, up=True)]
        if self.pool is not None:
            ops.append(Addr(self.ifindex, self.iface, self.pool.gateway, self.pool.prefixlen))
        if self.pool6 is not None:
            ops += [Addr(self.ifindex, self.iface, ROUTER_LINK_LOCAL, 64, nodad=not self.dad),
                    Addr(self.ifindex, self.iface, self.pool6.gateway, self.pool6.prefixlen, nodad=not self.dad)]
        return ops


def redirect_ops(ifindex: int, label: str, prio: int, target: int,
                 dsts: IPv4Address | IPv6Address | tuple[IPv4Address | IPv6Address, ...] | None) -> list[NetOp]:
    """Filters sending what leaves `ifindex` into `target` (a wire's TAP, an IFB): one per
    destination address (a device's IPv4 and IPv6 on its router's LAN), all at `prio`; or one
    for every packet."""
    if dsts is not None and not isinstance(dsts, tuple):
        dsts = (dsts,)
    if not dsts:
        return [Redirect(ifindex, label, prio, target)]
    return [Redirect(ifindex, label, prio, target, ipv4_dst=a if isinstance(a, IPv4Address) else None,
                     ipv6_dst=a if isinstance(a, IPv6Address) else None) for a in dsts]


def pool_route(cidr: IPv4Network | IPv6Network, via: IPv4Address | IPv6Address, *, add: bool = True) -> Route:
    """Route a downstream pool toward the router that owns it."""
    return Route(cidr, via, add=add)


# ---- rule text owned by the core ---------------------------------------------------------


def pmtu_blackhole_rules() -> str:
    """Drop ICMP "fragmentation needed" the router forwards or sends itself (a PMTU blackhole)."""
    return (
        "table ip pb_pmtu {\n"
        "  chain forward { type filter hook forward priority -10; policy accept;\n"
        '    icmp type destination-unreachable icmp code frag-needed counter drop comment "pmtu.frag_needed_dropped"\n'
        "  }\n"
        "  chain output { type filter hook output priority -10; policy accept;\n"
        '    icmp type destination-unreachable icmp code frag-needed counter drop comment "pmtu.frag_needed_dropped"\n'
        "  }\n"
        "}\n"
    )
