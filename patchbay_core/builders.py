"""Builders: describe a router or device, then `await .build()`.

Builders only collect what was asked; the lab checks and plans at `build()` and raises
TopologyError naming the node and the field. Methods called after `.preset()` override it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from .firewall import Firewall, FirewallConfig
from .link import LinkCondition
from .nat import Nat, NatConfig, NatV6Mode
from .routers import IpSupport, Pool, RouterPreset

if TYPE_CHECKING:
    from .handles import Device, Region, Router
    from .lab import Lab

@dataclass
class RouterSettings:
    """What a RouterBuilder collected (None: not asked)."""

    preset: RouterPreset | str | None = None
    nat: Nat | NatConfig | str | None = None
    nat_v6: NatV6Mode | None = None
    firewall: Firewall | FirewallConfig | str | None = None
    ip_support: IpSupport | None = None
    upstream: Router | str | None = None
    region: Region | str | None = None
    mtu: int | None = None
    block_icmp_frag_needed: bool = False
    downlink_condition: LinkCondition | str | None = None
    pool: Pool | None = None
    downstream_cidr: IPv4Network | str | None = None
    isolated: bool = False
    port_forwards: list[tuple[str, int, Device | str, int | None]] = field(default_factory=list)
    nat64_timeouts: dict[str, int] = field(default_factory=dict)


class RouterBuilder:
    def __init__(self, lab: Lab, name: str) -> None:
        self._lab = lab
        self.name = name
        self.settings = RouterSettings()

    def preset(self, preset: RouterPreset | str) -> RouterBuilder:
        self.settings.preset = preset
        return self

    def nat(self, nat: Nat | NatConfig | str) -> RouterBuilder:
        self.settings.nat = nat
        return self

    def nat_v6(self, mode: NatV6Mode) -> RouterBuilder:
        self.settings.nat_v6 = mode
        return self

    def firewall(self, firewall: Firewall | FirewallConfig | str) -> RouterBuilder:
        self.settings.firewall = firewall
        return self

    def ip_support(self, support: IpSupport) -> RouterBuilder:
        self.settings.ip_support = support
        return self

    def upstream(self, router: Router | str) -> RouterBuilder:
        """Plug this router into `router`'s downstream network instead of the IX."""
        self.settings.upstream = router
        return self

    def region(self, region: Region | str) -> RouterBuilder:
        """Place the router in a region (it hangs off the region's router)."""
        self.settings.region = region
        return self

    def mtu(self, mtu: int) -> RouterBuilder:
        """The MTU of the router's downstream network (its LAN and what plugs into it)."""
        self.settings.mtu = mtu
        return self

    def block_icmp_frag_needed(self) -> RouterBuilder:
        self.settings.block_icmp_frag_needed = True
        return self

    def downlink_condition(self, condition: LinkCondition | str) -> RouterBuilder:
        self.settings.downlink_condition = condition
        return self

    def pool(self, pool: Pool) -> RouterBuilder:
        self.settings.pool = pool
        return self

    def downstream_cidr(self, cidr: IPv4Network | str) -> RouterBuilder:
        self.settings.downstream_cidr = cidr
        return self

    def nat64_timeouts(self, udp: int = 300, tcp_established: int = 7200, icmp: int = 60) -> RouterBuilder:
        """Binding lifetimes of the router's NAT64 translator, in seconds (RFC 6146 defaults)."""
        self.settings.nat64_timeouts = {"udp": udp, "tcp_established": tcp_established, "icmp": icmp}
        return self

    def isolated(self) -> RouterBuilder:
        """No uplink: devices behind it reach each other and nothing else."""
        self.settings.isolated = True
        return self

    def port_forward(
        self, proto: str, port: int, device: Device | str, device_port: int | None = None
    ) -> RouterBuilder:
        self.settings.port_forwards.append((proto, port, device, device_port))
        return self

    async def build(self) -> Router:
        return await self._lab._build_router(self)


@dataclass
class IfaceRequest:
    name: str
    router: Router | str
    condition: LinkCondition | str | None


class DeviceBuilder:
    def __init__(self, lab: Lab, name: str) -> None:
        self._lab = lab
        self.name = name
        self.ifaces: list[IfaceRequest] = []
        self.default_via_name: str | None = None
        self.mtu_value: int | None = None

    def iface(self, name: str, router: Router | str, condition: LinkCondition | str | None = None) -> DeviceBuilder:
        self.ifaces.append(IfaceRequest(name, router, condition))
        return self

    def uplink(self, router: Router | str) -> DeviceBuilder:
        return self.iface("eth0", router)

    def default_via(self, iface: str) -> DeviceBuilder:
        self.default_via_name = iface
        return self

    def mtu(self, mtu: int) -> DeviceBuilder:
        self.mtu_value = mtu
        return self

    async def build(self) -> Device:
        return await self._lab._build_device(self)
