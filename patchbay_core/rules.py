"""What rule generators know about a router (passed to the nft-text hooks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network


@dataclass(frozen=True)
class PortForward:
    proto: str  # "tcp" or "udp"
    port: int
    device_ip: IPv4Address
    device_port: int


@dataclass(frozen=True)
class RuleContext:
    """A router as rule text sees it.

    `table`: the one table name the text must use (``table ip|ip6|inet <table> { ... }``); the core
    deletes tables of that name before applying new text, so a NAT or firewall can be swapped
    at runtime. Interface names are matched with `iifname`/`oifname` (strings), never
    `iif`/`oif` (indexes resolved at load time).

    `port_forwards`: the forwards whose device is plugged in now. `reserved_ports`: every
    (proto, WAN port) the router forwards, now or once its device arrives; a NAT must not hand
    them out as mappings. A NAT table that declares `set reserved { type inet_proto .
    inet_service; }` has it kept equal to the forwarded ports by the core at runtime.

    `shared_lan`: two hosts may want one external port: the LAN has handed out a second
    address (ever), or the router forwards ports. Until then a NAT may leave out what only
    such collisions need; `patchbay_nat_shared_rules` adds it when this turns true.
    """

    router: str
    table: str
    wan_iface: str
    lan_iface: str
    wan_ip: IPv4Address | None
    lan_cidr: IPv4Network | None
    wan_ip6: IPv6Address | None = None
    lan_cidr6: IPv6Network | None = None
    port_forwards: tuple[PortForward, ...] = field(default=())
    reserved_ports: tuple[tuple[str, int], ...] = field(default=())
    npt_prefix6: IPv6Network | None = None  # NPTv6: the outside prefix lan_cidr6 maps onto
    shared_lan: bool = False
