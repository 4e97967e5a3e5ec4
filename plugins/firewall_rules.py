"""nftables text for firewalls: block unsolicited inbound (RFC 6092 CE-router style) and limit
outbound TCP/UDP to allowed destination ports, for IPv4 and IPv6 alike (one `inet` table: a
public IPv6 device behind BLOCK_INBOUND is as unreachable as a NATed IPv4 one). Replies and
ICMP errors always flow (conntrack `established,related`); neighbour discovery to the router
is never blocked. Inbound a NAT admitted (a port forward, an endpoint-independent or
address-dependent mapping) is not unsolicited for the firewall: NAT and firewall compose."""

from __future__ import annotations

from patchbay_core.firewall import FirewallConfig
from patchbay_core.rules import RuleContext


def firewall_ruleset(config: FirewallConfig, ctx: RuleContext) -> str:
    wan, lan = f'"{ctx.wan_iface}"', f'"{ctx.lan_iface}"'
    forward = ["    ct state established,related accept"]
    if config.block_inbound and ctx.wan_iface:
        forward += [
            # IPv4 only: what a NAT44 mapping or port forward admitted. (An NPTv6 mapping DNATs
            # every inbound packet; under BLOCK_INBOUND it must stay blocked.)
            f'    iifname {wan} meta nfproto ipv4 ct status dnat counter accept '
            'comment "firewall.inbound_admitted_by_nat"',
            f'    iifname {wan} counter drop comment "firewall.inbound_blocked"',
        ]
    for proto, allowed in (("tcp", config.allow_tcp_ports), ("udp", config.allow_udp_ports)):
        if allowed is None:
            continue
        ports = f" {proto} dport != {{ {', '.join(str(p) for p in sorted(set(allowed)))} }}" if allowed else ""
        forward.append(f'    iifname {lan} meta l4proto {proto}{ports} counter drop '
                       f'comment "firewall.outbound_{proto}_blocked"')
    lines = [f"table inet {ctx.table} {{", "  chain forward {",
             "    type filter hook forward priority filter; policy accept;", *forward, "  }"]
    if config.block_inbound and ctx.wan_iface:
        lines += ["  chain input {", "    type filter hook input priority filter; policy accept;",
                  f"    iifname {wan} ct state established,related accept",
                  f"    iifname {wan} meta l4proto {{ icmp, ipv6-icmp }} accept",
                  f'    iifname {wan} counter drop comment "firewall.inbound_to_router_blocked"', "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
