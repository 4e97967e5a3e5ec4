"""Every hook patchbay calls. Plugins implement them with `@patchbay_core.hookimpl`.

The built-in presets are themselves a plugin (`plugins/builtin.py`); the core never asks
"which preset is this?", it asks these hooks. Preset hooks are merged: every plugin's dict is
collected, later-registered plugins win on equal names. Rule hooks are `firstresult`: the
first plugin that returns text (not None) decides.
"""

from __future__ import annotations

import pluggy

from .firewall import FirewallConfig
from .link import LinkLimits
from .nat import NatConfig
from .routers import RouterSpec
from .rules import RuleContext

hookspec = pluggy.HookspecMarker("patchbay")
hookimpl = pluggy.HookimplMarker("patchbay")


@hookspec
def patchbay_nat_presets() -> dict[str, NatConfig]:
    """NAT presets by name (``"home"``, ...). Called when a name must become a NatConfig."""
    raise NotImplementedError


@hookspec
def patchbay_firewall_presets() -> dict[str, FirewallConfig]:
    """Firewall presets by name (``"block-inbound"``, ...)."""
    raise NotImplementedError


@hookspec
def patchbay_router_presets() -> dict[str, RouterSpec]:
    """Router presets by name (``"public"``, ``"home"``, ...): NAT, firewall, IP support, pool."""
    raise NotImplementedError


@hookspec
def patchbay_link_presets() -> dict[str, LinkLimits]:
    """Link-condition presets by name (``"wifi"``, ``"mobile-4g"``, ...)."""
    raise NotImplementedError


@hookspec(firstresult=True)
def patchbay_nat_rules(config: NatConfig, ctx: RuleContext) -> str | None:
    """nft ruleset text implementing `config` on the router described by `ctx`.

    Called when a router with NAT is built and whenever its NAT or port forwards change. The
    text is applied as one transaction after the router's previous NAT table is deleted; it
    should create its own tables (e.g. ``table ip nat { ... }``). Return None to let the next
    plugin decide.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def patchbay_firewall_rules(config: FirewallConfig, ctx: RuleContext) -> str | None:
    """nft ruleset text implementing firewall `config` on the router described by `ctx`.
    Same contract as `patchbay_nat_rules`."""
    raise NotImplementedError
