"""A router's nftables: which tables it has, who wrote their text, and applying them.

Tables (one `table ip <name>` each, so any of them can be swapped at runtime):
- `pb_nat`      the NAT plugin's text (hook `patchbay_nat_rules`),
- `pb_nat6`     IPv6 translation, NPTv6 or masquerade (hook `patchbay_nat6_rules`),
- `pb_fw`       the firewall plugin's text (hook `patchbay_firewall_rules`),
- `pb_portfwd`  port forwards (core): unsolicited inbound to the WAN address, DNATed to a
                device before any NAT filtering is consulted,
- `pb_pmtu`     the PMTU blackhole (core), when asked for.
All of a router's tables go in as one transaction. When nft refuses it, each part is checked
alone so the error can name the plugin whose text was wrong.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any

from . import netplan
from .errors import NftError, TopologyError
from .firewall import FirewallConfig
from .kernel.namespace import NetNs
from .nat import NatConfig, NatV6Mode
from .plugins import plugin_manager
from .rules import PortForward, RuleContext

NAT_TABLE, FIREWALL_TABLE, PORTFWD_TABLE, PMTU_TABLE = "pb_nat", "pb_fw", "pb_portfwd", "pb_pmtu"
NAT6_TABLE = "pb_nat6"
CORE = "patchbay core"
_TABLE_FAMILY = re.compile(r"^\s*table\s+(ip|ip6|inet|arp|bridge|netdev)\s+(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class RulePart:
    table: str
    text: str
    author: str  # the plugin (or the core) that wrote the text

    @property
    def family(self) -> str:
        """The nft family the text gave its table (plugins choose: ip, ip6 or inet)."""
        for family, name in _TABLE_FAMILY.findall(self.text):
            if name == self.table:
                return str(family)
        return "ip"


def _first_answer(hook: Any, *, only: str | None = None, **kwargs: Any) -> tuple[str | None, str]:
    """Call a firstresult hook's implementations in pluggy's order (or only plugin `only`'s);
    return (text, plugin)."""
    for impl in reversed(hook.get_hookimpls()):
        if only is not None and impl.plugin_name != only:
            continue
        text = impl.function(**{name: kwargs[name] for name in impl.argnames})
        if text is not None:
            return text, impl.plugin_name
    return None, ""


def nat_part(config: NatConfig, ctx: RuleContext) -> RulePart:
    text, author = _first_answer(plugin_manager().hook.patchbay_nat_rules, config=config,
                                 ctx=_with_table(ctx, NAT_TABLE))
    if text is None:
        raise TopologyError(f"no plugin generates NAT rules for {config}", node=ctx.router, field="nat")
    return RulePart(NAT_TABLE, text, author)


def nat_shared_part(config: NatConfig, ctx: RuleContext, author: str) -> RulePart | None:
    """What the NAT table written by plugin `author` adds once its LAN is shared (None: nothing)."""
    text, _ = _first_answer(plugin_manager().hook.patchbay_nat_shared_rules, only=author, config=config,
                            ctx=replace(ctx, table=NAT_TABLE, shared_lan=True))
    return RulePart(NAT_TABLE, text, author) if text else None


def nat_author(parts: Iterable[RulePart]) -> str:
    """The plugin that wrote the NAT table among `parts` ("" when there is none)."""
    return next((part.author for part in parts if part.table == NAT_TABLE), "")


def nat6_part(mode: NatV6Mode, ctx: RuleContext) -> RulePart:
    text, author = _first_answer(plugin_manager().hook.patchbay_nat6_rules, mode=mode, ctx=_with_table(ctx, NAT6_TABLE))
    if text is None:
        raise TopologyError(f"no plugin generates IPv6 rules for {mode.value}", node=ctx.router, field="nat_v6")
    return RulePart(NAT6_TABLE, text, author)


def firewall_part(config: FirewallConfig, ctx: RuleContext) -> RulePart:
    text, author = _first_answer(plugin_manager().hook.patchbay_firewall_rules, config=config,
                                 ctx=_with_table(ctx, FIREWALL_TABLE))
    if text is None:
        raise TopologyError(f"no plugin generates firewall rules for {config}", node=ctx.router, field="firewall")
    return RulePart(FIREWALL_TABLE, text, author)


def portfwd_part(ctx: RuleContext) -> RulePart:
    elements = ", ".join(f"{pf.proto} . {pf.port} : {pf.device_ip} . {pf.device_port}" for pf in ctx.port_forwards)
    text = (
        f"table ip {PORTFWD_TABLE} {{\n"
        f"  map forwards {{ type inet_proto . inet_service : ipv4_addr . inet_service;"
        f"{f' elements = {{ {elements} }};' if elements else ''} }}\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat - 10; policy accept;\n"
        f'    iifname "{ctx.wan_iface}" ip daddr {ctx.wan_ip} meta l4proto {{ tcp, udp }} '
        "meta l4proto . th dport @forwards counter dnat ip to meta l4proto . th dport map @forwards "
        'comment "portfwd.forwarded"\n'
        "  }\n"
        "}\n"
    )
    return RulePart(PORTFWD_TABLE, text, CORE)


def pmtu_part() -> RulePart:
    return RulePart(PMTU_TABLE, netplan.pmtu_blackhole_rules(), CORE)


def forward_element(pf: PortForward) -> str:
    return f"{pf.proto} . {pf.port} : {pf.device_ip} . {pf.device_port}"


def _with_table(ctx: RuleContext, table: str) -> RuleContext:
    return replace(ctx, table=table)


def apply(ns: NetNs, parts: Iterable[RulePart], *, replace: dict[str, str] | None = None) -> None:
    """Apply `parts` in one transaction, first deleting the tables in `replace` (name: family)."""
    parts = list(parts)
    text = _transaction(parts, replace)
    if not text:
        return
    with _blaming(ns, parts):
        ns.nft(text)


class PendingRules:
    """`apply` started on a C thread of its own (`NetNs.nft_start`), so that a router's tables
    load while the kernel thread wires it. `wait()` must be called before the namespace closes."""

    def __init__(self, ns: NetNs, parts: Iterable[RulePart]) -> None:
        self._ns = ns
        self._parts = list(parts)
        text = _transaction(self._parts, None)
        self._pending = ns.nft_start(text) if text else None

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        with _blaming(self._ns, self._parts):
            self._ns.nft_finish(pending)


def _transaction(parts: list[RulePart], replace: dict[str, str] | None) -> str:
    head = "".join(f"add table {family} {t}\ndelete table {family} {t}\n" for t, family in (replace or {}).items())
    return head + "".join(part.text for part in parts)


@contextlib.contextmanager
def _blaming(ns: NetNs, parts: list[RulePart]) -> Iterator[None]:
    """When nft refuses the transaction, raise the error of the part it refuses on its own,
    naming the plugin that wrote it (nft's own error when no part alone is refused)."""
    try:
        yield
    except NftError as exc:
        for part in parts:
            try:
                ns.nft(part.text, check_only=True)
            except NftError as part_exc:
                raise NftError(f"apply the {part.table} rules written by {part.author}", part_exc.errno,
                               node=ns.node, detail=part_exc.detail) from exc
        raise


def conntrack_sysctls(config: NatConfig | None) -> dict[str, str]:
    """The NAT's timeouts as conntrack settings of the router's namespace."""
    if config is None:
        return {}
    return {
        "net.netfilter.nf_conntrack_udp_timeout": str(config.udp_timeout),
        "net.netfilter.nf_conntrack_udp_timeout_stream": str(config.udp_stream_timeout),
        "net.netfilter.nf_conntrack_tcp_timeout_established": str(config.tcp_established_timeout),
    }


_COUNTED_RULE = re.compile(r'counter packets (\d+) bytes \d+.*comment "([^"]+)"')
_OWNER_ELEMENT = re.compile(r"(\w+) \. (\d+)(?: timeout \S+)?(?: expires (\S+))? : ([\d.]+) \. (\d+)")
_DURATION_PART = re.compile(r"(\d+)(ms|d|h|m|s)")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def named_counters(ns: NetNs) -> dict[str, int]:
    """Packets counted by every rule that has a `counter` and a `comment`, summed by comment.

    Read from nft's text listing: its JSON printer cannot show dynamic map updates and
    complains about them on the process's stderr.
    """
    counts: dict[str, int] = {}
    for line in ns.nft("list ruleset").splitlines():
        m = _COUNTED_RULE.search(line)
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
    return counts


def _seconds(text: str | None) -> int | None:
    if not text:
        return None
    return int(sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text)))


def owner_map(ns: NetNs) -> list[tuple[str, int, IPv4Address, int, int | None]]:
    """The NAT's mapping owners, if its table has an `owner` map shaped like the built-in one:
    (proto, external port, internal ip, internal port, seconds left)."""
    try:
        listing = ns.nft(f"list map ip {NAT_TABLE} owner")
    except NftError:
        return []
    return [(proto, int(port), IPv4Address(ip), int(iport), _seconds(expires))
            for proto, port, expires, ip, iport in _OWNER_ELEMENT.findall(listing)]
