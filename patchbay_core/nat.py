"""NAT behaviour as data: RFC 4787 mapping x filtering, timeouts, hairpin.

The values of the presets live in plugins (see `plugins/builtin.py`); here are only the names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .routers import Pool


class NatMapping(enum.Enum):
    """How external ports are chosen (RFC 4787 section 4.1)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    ENDPOINT_DEPENDENT = "address-and-port-dependent"  # alias: "symmetric" NAT


class NatFiltering(enum.Enum):
    """Which inbound packets reach a mapping (RFC 4787 section 5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class NatConfig:
    """One NAT behaviour (RFC 4787). Timeouts are seconds: `udp_timeout` for UDP flows that
    saw no reply yet, `udp_stream_timeout` for answered ones and the lifetime of a UDP mapping,
    `tcp_established_timeout` for TCP (conntrack settings of the router's namespace).

    `downstream_pool`: the address pool a router with this NAT gives its customers when the
    router does not choose one (None: private). Carrier-grade NAT uses Pool.CGNAT.
    """

    mapping: NatMapping = NatMapping.ENDPOINT_INDEPENDENT
    filtering: NatFiltering = NatFiltering.ADDRESS_AND_PORT_DEPENDENT
    udp_timeout: int = 30
    udp_stream_timeout: int = 300
    tcp_established_timeout: int = 7200
    hairpin: bool = False
    downstream_pool: Pool | None = None


class Nat(enum.Enum):
    """Named NAT presets; the value is the preset name plugins define."""

    NONE = "none"
    HOME = "home"
    CORPORATE = "corporate"
    FULL_CONE = "full-cone"
    CLOUD_NAT = "cloud-nat"
    CGNAT = "cgnat"


class NatV6Mode(enum.Enum):
    NONE = "none"
    NAT64 = "nat64"
    NPTV6 = "nptv6"
    MASQUERADE = "masquerade"
