"""What a router is: address families, address pools, presets."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .firewall import Firewall, FirewallConfig
    from .nat import Nat, NatConfig, NatV6Mode


class IpSupport(enum.Enum):
    V4_ONLY = "v4-only"
    V6_ONLY = "v6-only"
    DUAL_STACK = "dual-stack"


class Pool(enum.Enum):
    """Where a router's downstream addresses come from: public (198.18.N.0/24), private
    (10.0.N.0/24) or the carrier-grade NAT shared space of RFC 6598 (100.64.N.0/24)."""

    PUBLIC = "public"
    PRIVATE = "private"
    CGNAT = "cgnat"


class RouterPreset(enum.Enum):
    HOME = "home"
    PUBLIC = "public"
    PUBLIC_V4 = "public-v4"
    ISP_CGNAT = "isp-cgnat"
    ISP_V6 = "isp-v6"
    CORPORATE = "corporate"
    HOTEL = "hotel"
    CLOUD = "cloud"


@dataclass(frozen=True)
class RouterSpec:
    """The settings a router preset stands for. None leaves the builder's default."""

    nat: Nat | NatConfig | str | None = None
    nat_v6: NatV6Mode | None = None
    firewall: Firewall | FirewallConfig | str | None = None
    ip_support: IpSupport | None = None
    pool: Pool | None = None
