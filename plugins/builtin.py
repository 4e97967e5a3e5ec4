"""The built-in plugin: the presets that ship with patchbay and the rule generators for them.

NAT semantics are in `nat_rules.py`, firewalls in `firewall_rules.py`; this module only maps
names to values and hooks to generators.
"""

from __future__ import annotations

from patchbay_core.firewall import Firewall, FirewallConfig
from patchbay_core.hookspecs import hookimpl
from patchbay_core.link import LinkLimits
from patchbay_core.nat import Nat, NatConfig, NatFiltering, NatMapping, NatV6Mode
from patchbay_core.routers import IpSupport, Pool, RouterSpec
from patchbay_core.rules import RuleContext

from .firewall_rules import firewall_ruleset
from .nat6_rules import nat6_ruleset
from .nat_rules import nat_ruleset, nat_shared_ruleset

EIM = NatMapping.ENDPOINT_INDEPENDENT
EDM = NatMapping.ADDRESS_AND_PORT_DEPENDENT


@hookimpl
def patchbay_nat_presets() -> dict[str, NatConfig]:
    apdf = NatFiltering.ADDRESS_AND_PORT_DEPENDENT
    eif = NatFiltering.ENDPOINT_INDEPENDENT
    return {
        # FritzBox, Unifi, TP-Link, OpenWRT: port-preserving EIM, port-restricted filtering.
        Nat.HOME.value: NatConfig(mapping=EIM, filtering=apdf, udp_stream_timeout=300),
        # Cisco ASA, Palo Alto, Fortinet: symmetric, random ports.
        Nat.CORPORATE.value: NatConfig(mapping=EDM, filtering=apdf, udp_stream_timeout=120),
        Nat.FULL_CONE.value: NatConfig(mapping=EIM, filtering=eif, udp_stream_timeout=300),
        # AWS/Azure/GCP NAT gateways: symmetric, longer idle timeout.
        Nat.CLOUD_NAT.value: NatConfig(mapping=EDM, filtering=apdf, udp_stream_timeout=350),
        # Carrier-grade NAT: customers in RFC 6598 space, hairpin so they reach each other.
        Nat.CGNAT.value: NatConfig(mapping=EIM, filtering=eif, udp_stream_timeout=300, hairpin=True,
                                   downstream_pool=Pool.CGNAT),
    }


@hookimpl
def patchbay_firewall_presets() -> dict[str, FirewallConfig]:
    return {
        Firewall.BLOCK_INBOUND.value: FirewallConfig(block_inbound=True),
        # Web and DNS only: STUN and direct UDP are blocked, TURN over TLS on 443 is the way out.
        Firewall.CORPORATE.value: FirewallConfig(block_inbound=True, allow_tcp_ports=(80, 443), allow_udp_ports=(53,)),
        # Any TCP, but no UDP beyond DNS: QUIC is dead.
        Firewall.CAPTIVE_PORTAL.value: FirewallConfig(block_inbound=True, allow_udp_ports=(53,)),
    }


@hookimpl
def patchbay_router_presets() -> dict[str, RouterSpec]:
    return {
        "home": RouterSpec(nat=Nat.HOME, firewall=Firewall.BLOCK_INBOUND, ip_support=IpSupport.DUAL_STACK,
                           pool=Pool.PRIVATE),
        "public": RouterSpec(ip_support=IpSupport.DUAL_STACK, pool=Pool.PUBLIC),
        "public-v4": RouterSpec(ip_support=IpSupport.V4_ONLY, pool=Pool.PUBLIC),
        "isp-cgnat": RouterSpec(nat=Nat.CGNAT, ip_support=IpSupport.DUAL_STACK, pool=Pool.CGNAT),
        "isp-v6": RouterSpec(nat=Nat.NONE, nat_v6=NatV6Mode.NAT64, firewall=Firewall.BLOCK_INBOUND,
                             ip_support=IpSupport.V6_ONLY, pool=Pool.PUBLIC),
        "corporate": RouterSpec(nat=Nat.CORPORATE, firewall=Firewall.CORPORATE, ip_support=IpSupport.DUAL_STACK,
                                pool=Pool.PRIVATE),
        "hotel": RouterSpec(nat=Nat.CORPORATE, firewall=Firewall.CAPTIVE_PORTAL, ip_support=IpSupport.V4_ONLY,
                            pool=Pool.PRIVATE),
        "cloud": RouterSpec(nat=Nat.CLOUD_NAT, ip_support=IpSupport.DUAL_STACK, pool=Pool.PRIVATE),
    }


@hookimpl
def patchbay_link_presets() -> dict[str, LinkLimits]:
    # Access links: the book's Sim TOML Reference table.
    presets = {
        "lan": LinkLimits(),
        "wifi": LinkLimits(latency_ms=5, jitter_ms=2, loss_pct=0.1),
        "wifi-bad": LinkLimits(latency_ms=40, jitter_ms=15, loss_pct=2.0, rate_kbit=20_000),
        "mobile-4g": LinkLimits(latency_ms=25, jitter_ms=8, loss_pct=0.5),
        "mobile-3g": LinkLimits(latency_ms=100, jitter_ms=30, loss_pct=2.0, rate_kbit=2_000),
        "satellite": LinkLimits(latency_ms=40, jitter_ms=7, loss_pct=1.0),
        "satellite-geo": LinkLimits(latency_ms=300, jitter_ms=20, loss_pct=0.5, rate_kbit=25_000),
    }
    # Network-emulation profiles of the Freenet NAT test backend.
    presets |= {
        "regional": LinkLimits(latency_ms=40, jitter_ms=10, loss_pct=0.1, loss_correlation_pct=25.0),
        "intercontinental": LinkLimits(latency_ms=125, jitter_ms=25, loss_pct=0.5, loss_correlation_pct=25.0),
        "high-latency": LinkLimits(latency_ms=200, jitter_ms=30, loss_pct=1.0, loss_correlation_pct=25.0),
        "challenging": LinkLimits(latency_ms=150, jitter_ms=50, loss_pct=3.0, loss_correlation_pct=50.0),
    }
    return presets


@hookimpl
def patchbay_nat_rules(config: NatConfig, ctx: RuleContext) -> str | None:
    return nat_ruleset(config, ctx)


@hookimpl
def patchbay_nat_shared_rules(config: NatConfig, ctx: RuleContext) -> str | None:
    return nat_shared_ruleset(config, ctx)


@hookimpl
def patchbay_nat6_rules(mode: NatV6Mode, ctx: RuleContext) -> str | None:
    return nat6_ruleset(mode, ctx)


@hookimpl
def patchbay_firewall_rules(config: FirewallConfig, ctx: RuleContext) -> str | None:
    return firewall_ruleset(config, ctx)
