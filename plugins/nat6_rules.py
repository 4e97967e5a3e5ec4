"""nftables text for IPv6 translation at a router's border (NatV6Mode NPTV6 and MASQUERADE).

NPTv6 (RFC 6296): the inside prefix maps 1:1 onto an outside one of the same length, host
part kept. The core picks the outside prefix so that the mapping is checksum-neutral (see
`patchbay_core.nptv6`), which makes nft's prefix NAT exactly RFC 6296's mapping; each rule
matches addresses of the two prefixes only, so neighbour discovery (which uses the router's
own and link-local addresses) is never translated. Inbound to the outside prefix reaches the
inside host (a firewall decides whether unsolicited inbound may).
Masquerade: IPv6 NAPT behind the router's WAN address, like NAT44.
"""

from __future__ import annotations

from patchbay_core.nat import NatV6Mode
from patchbay_core.rules import RuleContext


def nat6_ruleset(mode: NatV6Mode, ctx: RuleContext) -> str | None:
    wan, inside = f'"{ctx.wan_iface}"', ctx.lan_cidr6
    if inside is None or not ctx.wan_iface or ctx.wan_ip6 is None:  # no IPv6 outside: nothing to do
        return f"table ip6 {ctx.table} {{\n}}\n"
    if mode is NatV6Mode.NPTV6:
        outside = ctx.npt_prefix6
        if outside is None:
            return None
        return (
            f"table ip6 {ctx.table} {{\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname {wan} ip6 daddr {outside} counter dnat prefix to {inside} comment "nat6.npt_inbound"\n'
            "  }\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname {wan} ip6 saddr {inside} counter snat prefix to {outside} comment "nat6.npt_outbound"\n'
            "  }\n"
            "}\n"
        )
    if mode is NatV6Mode.MASQUERADE:
        return (
            f"table ip6 {ctx.table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            # Everything from behind it (its own LAN and routers chained below), not the router
            # itself nor neighbour discovery.
            f'    oifname {wan} ip6 saddr != {{ {ctx.wan_ip6}, fe80::/10 }} counter masquerade '
            'comment "nat6.masquerade"\n'
            "  }\n"
            "}\n"
        )
    return None
