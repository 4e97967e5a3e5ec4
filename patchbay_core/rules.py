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

    `table`: the one table name the text must use (``table ip <table> { ... }``); the core
    deletes tables of that name before applying new text, so a NAT or firewall can be swapped
    at runtime. Interface names are matched with `iifname`/`oifname` (strings), never
    `iif`/`oif` (indexes resolved at load time).
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
