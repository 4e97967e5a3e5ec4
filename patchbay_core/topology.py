"""The lab's record of its nodes: what each is, where it is plugged, which addresses it holds.

Plain state, guarded by the lab's lock. Handles (`handles.py`) read it; the lab changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, Any

from .firewall import FirewallConfig
from .kernel.namespace import FIRST_IFINDEX, NetNs
from .link import LinkLimits
from .nat import NatConfig, NatV6Mode
from .netplan import AddressPool, Lan, LanPlug, Uplink
from .routers import IpSupport, Pool

if TYPE_CHECKING:
    from .execution import NodeRuntime
    from .kernel.nat64 import Nat64Translator
    from .nat64 import Nat64Config


@dataclass(eq=False)
class NodeState:
    kind: str  # "router", "device" or "ix"
    name: str
    id: int
    ns: NetNs | None = None
    runtime: NodeRuntime | None = None
    alive: bool = False
    next_ifindex: int = FIRST_IFINDEX

    def alloc_ifindex(self) -> int:
        index = self.next_ifindex
        self.next_ifindex += 1
        return index

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(eq=False)
class IxState(NodeState):
    bridge_ifindex: int = 0
    router_slots: AddressPool = field(default_factory=lambda: AddressPool(IPv4Network("0.0.0.0/32")))


@dataclass
class ForwardState:
    """A port forward: `device_ip` is known once the device has an interface on the router."""

    proto: str
    port: int
    device: str
    device_port: int
    device_ip: IPv4Address | None = None


@dataclass(frozen=True)
class RouterConfig:
    """A router's effective settings after presets and builder calls."""

    nat: NatConfig | None
    nat_v6: NatV6Mode
    firewall: FirewallConfig | None
    ip_support: IpSupport
    pool: Pool
    mtu: int
    block_icmp_frag_needed: bool
    isolated: bool


@dataclass(eq=False)
class RouterState(NodeState):
    config: RouterConfig | None = None
    parent: RouterState | None = None  # None and not isolated: plugged into the IX
    uplink: Uplink | None = None
    lan: Lan | None = None
    # Routes other namespaces hold toward this router's pool: (owner, destination, via).
    pool_routes: list[tuple[NodeState, IPv4Network | IPv6Network, IPv4Address | IPv6Address]] = field(
        default_factory=list)
    children: list[NodeState] = field(default_factory=list)
    forwards: dict[tuple[str, int], ForwardState] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)  # nft tables applied in its namespace: family
    nat_author: str = ""  # the plugin that wrote its NAT table, and the config it implements
    nat_written: NatConfig | None = None
    # Addresses its LAN has handed out (counted as they are wired), and whether two hosts may
    # want one external port now (a second address, or port forwards): RuleContext.shared_lan.
    lan_hosts: int = 0
    nat_shared: bool = False
    downlink: LinkLimits | None = None  # what it sends to its devices
    auto_pool: bool = True  # its pool came from the plan (not downstream_cidr)
    next_prio: int = 1  # for per-device download filters on its LAN
    npt_prefix6: IPv6Network | None = None  # NPTv6: the outside prefix of its IPv6 pool
    nat64_ip: IPv4Address | None = None  # NAT64: the IPv4 address its translator maps clients to
    nat64_config: Nat64Config | None = None
    nat64: Nat64Translator | None = None  # the running translator (kernel thread owns it)

    @property
    def pool(self) -> AddressPool | None:
        """The IPv4 pool (None on an IPv6-only LAN)."""
        return self.lan.pool if self.lan else None

    @property
    def pool6(self) -> AddressPool | None:
        return self.lan.pool6 if self.lan else None

    @property
    def has_v6(self) -> bool:
        return self.pool6 is not None or (self.uplink is not None and self.uplink.v6 is not None)

    @property
    def uplink_name(self) -> str | None:
        return self.uplink.iface if self.uplink else None

    def snapshot(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "name": self.name,
            "id": self.id,
            "upstream": self.parent.name if self.parent else (None if cfg and cfg.isolated else "ix"),
            "uplink": None if not self.uplink else {
                "iface": self.uplink.iface, "ip": _str(self.uplink.ip),
                "prefixlen": self.uplink.subnet.prefixlen if self.uplink.subnet else None,
                "gateway": _str(self.uplink.gateway),
                "ip6": _str(self.uplink.v6.ip if self.uplink.v6 else None),
            },
            "downstream_cidr": str(self.pool.cidr) if self.pool else None,
            "gateway": str(self.pool.gateway) if self.pool else None,
            "downstream_cidr6": str(self.pool6.cidr) if self.pool6 else None,
            "npt_prefix6": _str(self.npt_prefix6),
            "nat": _describe(cfg.nat) if cfg else None,
            "nat_v6": cfg.nat_v6.value if cfg else None,
            "firewall": _describe(cfg.firewall) if cfg else None,
            "ip_support": cfg.ip_support.value if cfg else None,
            "pool": cfg.pool.value if cfg else None,
            "mtu": cfg.mtu if cfg else 0,
            "downlink": _describe(self.downlink),
            "port_forwards": [f"{f.proto}/{f.port} -> {f.device}:{f.device_port}" for f in self.forwards.values()],
        }


@dataclass(eq=False)
class RegionLinkState:
    """One link between two regions, as seen from region `a` (and b)."""

    a: str
    b: str
    ifindex_a: int
    ifindex_b: int
    ip_a: IPv4Address
    ip_b: IPv4Address
    limits: LinkLimits
    broken: bool = False

    def end(self, region: str) -> tuple[int, IPv4Address, IPv4Address]:
        """(local ifindex, local address, peer address) from `region`'s side."""
        if region == self.a:
            return self.ifindex_a, self.ip_a, self.ip_b
        return self.ifindex_b, self.ip_b, self.ip_a


@dataclass(eq=False)
class RegionState:
    name: str
    router: RouterState
    links: dict[str, RegionLinkState] = field(default_factory=dict)  # by the other region's name
    routes: dict[IPv4Network, IPv4Address | None] = field(default_factory=dict)  # installed (None: blackhole)


@dataclass(eq=False)
class DeviceIfaceState:
    name: str
    router: RouterState
    attachment: LanPlug
    up: LinkLimits | None = None  # what the device sends
    down: LinkLimits | None = None  # what it receives from its router
    down_prio: int = 0  # its filter on the router's LAN, once it has one
    admin_up: bool = True  # link_down() / link_up()
    extra_ips: list[IPv4Interface | IPv6Interface] = field(default_factory=list)  # add_ip(): kept across replugs

    @property
    def ifindex(self) -> int:
        return self.attachment.ifindex

    @property
    def ip(self) -> IPv4Address | None:
        return self.attachment.ip

    @property
    def ip6(self) -> IPv6Address | None:
        return self.attachment.v6.ip if self.attachment.v6 else None


@dataclass(eq=False)
class DeviceState(NodeState):
    ifaces: dict[str, DeviceIfaceState] = field(default_factory=dict)
    default_iface: str | None = None
    mtu: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "default_iface": self.default_iface,
            "ifaces": [
                {
                    "name": i.name, "router": i.router.name, "ip": _str(i.ip),
                    "prefixlen": i.attachment.subnet.prefixlen if i.attachment.subnet else None,
                    "gateway": _str(i.attachment.gateway), "ip6": _str(i.ip6),
                    "link_up": i.admin_up, "extra_ips": [str(x) for x in i.extra_ips],
                    "up": _describe(i.up), "down": _describe(i.down),
                }
                for i in self.ifaces.values()
            ],
        }


def ns_of(node: NodeState) -> NetNs:
    """The node's namespace (it must be built)."""
    assert node.ns is not None, node.name
    return node.ns


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _describe(value: object) -> object:
    if value is None:
        return None
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(getattr(value, k), "value", getattr(value, k)) for k in value.__dataclass_fields__}
    return str(value)
