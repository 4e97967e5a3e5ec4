"""Firewall behaviour as data. Preset values live in plugins."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Firewall(enum.Enum):
    NONE = "none"
    BLOCK_INBOUND = "block-inbound"
    CORPORATE = "corporate"
    CAPTIVE_PORTAL = "captive-portal"


@dataclass(frozen=True)
class FirewallConfig:
    """block_inbound: drop unsolicited inbound connections. allow_*_ports: when not None,
    outbound traffic of that protocol is limited to these destination ports."""

    block_inbound: bool = False
    allow_tcp_ports: tuple[int, ...] | None = None
    allow_udp_ports: tuple[int, ...] | None = None

    @staticmethod
    def builder() -> FirewallConfigBuilder:
        return FirewallConfigBuilder()


class FirewallConfigBuilder:
    def __init__(self) -> None:
        self._block_inbound = False
        self._tcp: tuple[int, ...] | None = None
        self._udp: tuple[int, ...] | None = None

    def block_inbound(self, on: bool = True) -> FirewallConfigBuilder:
        self._block_inbound = on
        return self

    def allow_tcp_ports(self, ports: Iterable[int]) -> FirewallConfigBuilder:
        self._tcp = tuple(ports)
        return self

    def allow_udp_ports(self, ports: Iterable[int]) -> FirewallConfigBuilder:
        self._udp = tuple(ports)
        return self

    def build(self) -> FirewallConfig:
        return FirewallConfig(self._block_inbound, self._tcp, self._udp)
