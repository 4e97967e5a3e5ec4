"""What a router's NAT is doing, and a text dump of every node, read in-process through
netlink and libnftables (no `nft list`, `conntrack -L` or `ip` processes)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from . import router_rules
from .errors import PatchbayError
from .kernel.namespace import NetNs
from .topology import NodeState

Endpoint = tuple[IPv4Address, int]


@dataclass(frozen=True)
class MappingEntry:
    """One NAT mapping: `internal` is seen outside as `external`. `remote` is the peer of a live
    flow (None for a mapping kept by the NAT with no flow right now); `expires_s` is how long it
    lives without traffic."""

    proto: str
    internal: Endpoint
    external: Endpoint
    remote: Endpoint | None
    expires_s: int | None


def nat_mappings(ns: NetNs, wan: IPv4Address | None) -> list[MappingEntry]:
    entries: list[MappingEntry] = []
    live: set[tuple[str, int]] = set()
    for ct in ns.conntrack():
        o, r = ct.original, ct.reply
        if ct.src_nat:  # an outbound flow: internal -> remote, replies come to external
            entries.append(MappingEntry(ct.proto, (o.src, o.sport), (r.dst, r.dport), (o.dst, o.dport), ct.timeout_s))
            live.add((ct.proto, r.dport))
        elif ct.dst_nat:  # an inbound flow a mapping or a port forward admitted
            entries.append(MappingEntry(ct.proto, (r.src, r.sport), (o.dst, o.dport), (o.src, o.sport), ct.timeout_s))
            live.add((ct.proto, o.dport))
    for proto, port, ip, internal_port, expires in router_rules.owner_map(ns):
        if (proto, port) not in live and wan is not None:
            entries.append(MappingEntry(proto, (ip, internal_port), (wan, port), None, expires))
    return sorted(entries, key=lambda e: (e.proto, e.internal, e.remote or (IPv4Address(0), 0)))


def _section(title: str, lines: Iterable[str]) -> str:
    body = "\n".join(lines) or "(none)"
    return f"== {title}\n{body}\n"


def node_report(node: NodeState) -> str:
    ns = node.ns
    assert ns is not None
    names = {link.ifindex: link.name for link in ns.links()}
    parts = [f"{node.kind} {node.name}\n"]
    parts.append(_section("addresses", (f"{names.get(a.ifindex, a.ifindex)}: {a.ip}/{a.prefixlen}"
                                        for a in ns.addrs())))
    parts.append(_section("links", (
        f"{link.ifindex}: {link.name} {link.kind or '-'} {'up' if link.up else 'down'} mtu {link.mtu} "
        f"rx {link.rx_packets} pkts/{link.rx_bytes} B tx {link.tx_packets} pkts/{link.tx_bytes} B"
        for link in ns.links())))
    parts.append(_section("routes", (
        f"{r.dst}{f' via {r.via}' if r.via else ''} dev {names.get(r.oif, r.oif)}"
        f"{f' metric {r.metric}' if r.metric else ''}"
        for r in ns.routes() if r.table == 254)))
    try:
        ruleset = ns.nft("list ruleset").rstrip().splitlines()
    except PatchbayError as exc:
        ruleset = [f"(cannot list: {exc})"]
    parts.append(_section("nftables ruleset (with counters)", ruleset))
    try:
        conntrack = [entry.describe() for entry in ns.conntrack()]
    except PatchbayError as exc:
        conntrack = [f"(cannot list: {exc})"]
    parts.append(_section("conntrack", conntrack))
    return "\n".join(parts)


def write_all(nodes: Iterable[NodeState], directory: Path) -> None:
    for node in nodes:
        (directory / f"{node.kind}.{node.name}.txt").write_text(node_report(node), encoding="utf-8")
