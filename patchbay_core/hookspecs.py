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
from .nat import NatConfig, NatV6Mode
from .routers import RouterSpec
from .rules import RuleContext

hookspec = pluggy.HookspecMarker("patchbay")
hookimpl = pluggy.HookimplMarker("patchbay")


@hookspec
def patchbay_nat_presets() -> dict[str, NatConfig]:
    """NAT presets by name (``"home"``, ...). Called when a name must become a NatConfig."""


@hookspec
def patchbay_firewall_presets() -> dict[str, FirewallConfig]:
    """Firewall presets by name (``"block-inbound"``, ...)."""


@hookspec
def patchbay_router_presets() -> dict[str, RouterSpec]:
    """Router presets by name (``"public"``, ``"home"``, ...): NAT, firewall, IP support, pool."""


@hookspec
def patchbay_link_presets() -> dict[str, LinkLimits]:
    """Link-condition presets by name (``"wifi"``, ``"mobile-4g"``, ...)."""


@hookspec(firstresult=True)
def patchbay_nat_rules(config: NatConfig, ctx: RuleContext) -> str | None:
    """nft ruleset text implementing `config` on the router described by `ctx`.

    Called when a router with NAT is built and whenever its NAT or port forwards change. The
    text is applied as one transaction after the router's previous NAT table is deleted; it
    should create its own tables (e.g. ``table ip nat { ... }``). Return None to let the next
    plugin decide.
    """


@hookspec(firstresult=True)
def patchbay_nat_shared_rules(config: NatConfig, ctx: RuleContext) -> str | None:
    """nft text adding to the router's NAT table what it needs once `ctx.shared_lan` turns
    true (a second host on the LAN, or a port forward: two hosts may now want one external
    port), e.g. rules that pick another port. Only the plugin whose `patchbay_nat_rules`
    wrote the table is asked. The text runs as one transaction against the existing table
    (use ``table ip <ctx.table> { chain ... { ... } }`` to add rules to a chain); it is never
    asked again for that table: when the table is rewritten later, `patchbay_nat_rules` sees
    `ctx.shared_lan` true and includes it. Return None when nothing is missing.
    """


@hookspec(firstresult=True)
def patchbay_nat6_rules(mode: NatV6Mode, ctx: RuleContext) -> str | None:
    """nft ruleset text for IPv6 prefix translation (NatV6Mode.NPTV6: `ctx.lan_cidr6` <->
    `ctx.npt_prefix6`, host part kept) or masquerade (NatV6Mode.MASQUERADE, behind
    `ctx.wan_ip6`). NAT64 is the core's translator, not rule text. Same contract as
    `patchbay_nat_rules`; the text must leave neighbour discovery alone."""


@hookspec(firstresult=True)
def patchbay_firewall_rules(config: FirewallConfig, ctx: RuleContext) -> str | None:
    """nft ruleset text implementing firewall `config` on the router described by `ctx`.
    Same contract as `patchbay_nat_rules`."""
