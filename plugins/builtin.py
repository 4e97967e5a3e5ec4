"""The built-in plugin: presets that ship with patchbay.

Router presets that need no NAT come first (PUBLIC, PUBLIC_V4); the NAT and firewall
presets and their rule generators join through the same hooks.
"""

from __future__ import annotations

from patchbay_core.hookspecs import hookimpl
from patchbay_core.link import LinkLimits
from patchbay_core.routers import IpSupport, Pool, RouterSpec


@hookimpl
def patchbay_router_presets() -> dict[str, RouterSpec]:
    return {
        "public": RouterSpec(ip_support=IpSupport.DUAL_STACK, pool=Pool.PUBLIC),
        "public-v4": RouterSpec(ip_support=IpSupport.V4_ONLY, pool=Pool.PUBLIC),
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
