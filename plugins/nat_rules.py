"""nftables text for RFC 4787 NAT: every mapping x filtering combination, UDP and TCP.

Linux conntrack alone keeps a translated tuple unique per destination, which is not
endpoint-independent mapping: two hosts using one local port would share an external port
(and steal each other's unsolicited inbound), and a host could get different external ports
towards different servers. So the mapping state is explicit, in dynamic nft maps:

- `owner`  external port -> internal ip:port. Every mapping's external port is here, which
           keeps them unique, and unsolicited inbound finds its host through it.
- `eim`    internal ip:port -> external port (endpoint-independent mapping).
- `adm`    internal ip:port . remote ip -> external port (address-dependent mapping).
- address-and-port-dependent ("symmetric") mapping needs no map: each new flow gets a
  random port from conntrack (`snat ... random`), like a Linux `masquerade random`.
- `seen_addr`  external port . remote ip: whom a mapping has sent to (address-dependent
           filtering admits those remote addresses, any port).

A new outbound flow (the only packets a nat chain sees) reuses its mapping, or takes its own
port if no mapping owns it (port preservation), or the first free of a few nearby ports.
Unsolicited inbound is DNATed to a mapping's owner only when the filtering mode admits it;
everything else reaching the router's WAN dies in the input chain before conntrack confirms
it, so a dropped probe never blocks a later hole punch. Address-and-port-dependent filtering
is conntrack itself: only replies of existing flows come in.
Mappings live `udp_stream_timeout` (UDP) or `tcp_established_timeout` (TCP) seconds after
the last outbound packet (RFC 4787 REQ-6: outbound refresh).
"""

from __future__ import annotations

from patchbay_core.nat import NatConfig, NatFiltering, NatMapping
from patchbay_core.rules import RuleContext

PROTOS = ("udp", "tcp")
# Other ports tried, as XOR masks of the wanted port, when another mapping owns it: its seven
# neighbours in an aligned block of eight (eight hosts behind one NAT can share a local port
# and each keep a stable mapping). Each candidate is a rule nft compiles (~0.1 ms), so they
# are few, and loaded only once a second host is on the LAN; past them conntrack picks a
# random port.
ALTERNATE_MASKS = (1, 2, 3, 4, 5, 6, 7)
# Mappings a router holds at most (like a home router's conntrack limit); past it new flows
# get a port per flow (`nat.ports_crowded`). Sets updated from the packet path get a hash
# preallocated from this size (roundup_pow_of_two(size * 4 / 3) buckets), and the kernel walks
# all its buckets once for every chain that uses a map. nft's default, 65535, costs ~6 ms of
# kernel time per map when a router is built; 3072 takes 4096 buckets, 4096 would take 8192
# (0.2 ms more per router).
MAP_SIZE = 3072


def nat_ruleset(config: NatConfig, ctx: RuleContext) -> str:
    if ctx.wan_ip is None:
        # An isolated router has no outside to translate to.
        return f"table ip {ctx.table} {{\n}}\n"
    return _Generator(config, ctx).text()


def nat_shared_ruleset(config: NatConfig, ctx: RuleContext) -> str | None:
    """What the table `nat_ruleset` wrote adds once ctx.shared_lan turns true."""
    if ctx.wan_ip is None:
        return None
    return _Generator(config, ctx).shared_text()


class _Generator:
    def __init__(self, config: NatConfig, ctx: RuleContext) -> None:
        self.c = config
        self.ctx = ctx
        self.wan = f'"{ctx.wan_iface}"'
        self.lan = f'"{ctx.lan_iface}"'
        self.w = str(ctx.wan_ip)
        self.eim = config.mapping is NatMapping.ENDPOINT_INDEPENDENT
        self.adm = config.mapping is NatMapping.ADDRESS_DEPENDENT
        self.edm = config.mapping is NatMapping.ADDRESS_AND_PORT_DEPENDENT
        self.admits_unsolicited = config.filtering is not NatFiltering.ADDRESS_AND_PORT_DEPENDENT
        self.track_remotes = config.filtering is NatFiltering.ADDRESS_DEPENDENT or config.hairpin
        # Forwarded ports are never handed out as mappings (the core keeps the set current
        # when forwards are added or removed at runtime).
        forwarded = {(pf.proto, pf.port) for pf in ctx.port_forwards} | set(ctx.reserved_ports)
        self.reserved = sorted(f"{proto} . {port}" for proto, port in forwarded)

    def timeout(self, proto: str) -> int:
        return self.c.udp_stream_timeout if proto == "udp" else self.c.tcp_established_timeout

    def text(self) -> str:
        lines = [f"table ip {self.ctx.table} {{"]
        lines += self.sets()
        lines += self.prerouting()
        lines += self.postrouting()
        lines += self.allocate()
        lines += self.refresh()
        lines += self.input()
        lines.append("}")
        return "\n".join(lines) + "\n"

    def sets(self) -> list[str]:
        flags = f"flags dynamic,timeout; timeout {self.c.udp_stream_timeout}s; size {MAP_SIZE};"
        out = [f"  map owner {{ type inet_proto . inet_service : ipv4_addr . inet_service; {flags} }}"]
        if self.eim:
            out.append(f"  map eim {{ type inet_proto . ipv4_addr . inet_service : inet_service; {flags} }}")
        if self.adm:
            key = "inet_proto . ipv4_addr . inet_service . ipv4_addr"
            out.append(f"  map adm {{ type {key} : inet_service; {flags} }}")
        if self.track_remotes:
            out.append(f"  set seen_addr {{ type inet_proto . inet_service . ipv4_addr; {flags} }}")
        elements = f" elements = {{ {', '.join(self.reserved)} }};" if self.reserved else ""
        out.append(f"  set reserved {{ type inet_proto . inet_service;{elements} }}")
        return out

    def admit(self, remote: str) -> str | None:
        """The match that lets unsolicited inbound from `remote` reach a mapping's owner."""
        if self.c.filtering is NatFiltering.ENDPOINT_INDEPENDENT:
            return "meta l4proto . th dport @owner"
        if self.c.filtering is NatFiltering.ADDRESS_DEPENDENT:
            return f"meta l4proto . th dport . {remote} @seen_addr"
        return None

    def prerouting(self) -> list[str]:
        out = ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
        dnat = "dnat ip to meta l4proto . th dport map @owner"
        inbound = self.admit("ip saddr")
        if inbound:
            out.append(f"    iifname {self.wan} ip daddr {self.w} meta l4proto {{ tcp, udp }} {inbound} "
                       f'counter {dnat} comment "nat.inbound_admitted"')
        if self.c.hairpin:
            # From the LAN to our own address: filtered as if it came from outside, from us (the
            # packet's destination is our address, so `ip daddr` names us as the remote).
            hairpin = self.admit("ip daddr") or "meta l4proto . th dport . ip daddr @seen_addr"
            out.append(f"    iifname {self.lan} ip daddr {self.w} meta l4proto {{ tcp, udp }} {hairpin} "
                       f'counter {dnat} comment "nat.hairpin"')
        if len(out) == 2:
            return []  # nothing comes in unsolicited: no hook to register
        out.append("  }")
        return out

    def postrouting(self) -> list[str]:
        # UDP and TCP find or make their mapping in `allocate`; ICMP and other protocols get the
        # WAN address, and conntrack picks their ids.
        leaving = f"oifname {self.wan} ip saddr != {self.w}"
        out = ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;",
               f"    {leaving} meta l4proto {{ tcp, udp }} jump allocate", f"    {leaving} snat ip to {self.w}"]
        if self.c.hairpin:
            hairpinned = f"iifname {self.lan} oifname {self.lan} ct status dnat"
            out += [f"    {hairpinned} meta l4proto {{ tcp, udp }} jump allocate",
                    f"    {hairpinned} snat ip to {self.w}"]
        out.append("  }")
        return out

    def allocate(self) -> list[str]:
        """The first UDP or TCP packet of a flow leaving through the NAT: find or make its mapping.

        A new mapping starts with the UDP lifetime (the refresh chains give TCP mappings theirs).
        The candidate rules only record a mapping and go to `mapped`, which translates through
        it: nft wants a protocol match in the rule of every NAT statement with a port, and
        compiles `meta l4proto { tcp, udp }` to an anonymous set each time, so there is one.
        Other ports than the host's own are tried in `collisions`, which stays empty while one
        host is alone behind an endpoint-independent NAT (see `shared_text`)."""
        if self.edm:
            # Symmetric: a random port for every flow (its owner is learnt after translation).
            return ["  chain allocate {", f'    counter snat ip to {self.w} random comment "nat.new_mapping"', "  }"]
        # Address-dependent mapping moves ports even for one host: a second remote address
        # needs a second mapping of the same local port.
        collide_now = self.ctx.shared_lan or self.adm
        return ["  chain allocate {", f"    {self.key} @{self.map_name} goto mapped", self.candidate(0),
                "    jump collisions",
                # Every candidate port is taken: let conntrack pick one (never fails, rarely collides).
                f'    counter snat ip to {self.w} random comment "nat.ports_crowded"', "  }",
                "  chain collisions {", *(self.collisions() if collide_now else []), "  }",
                "  chain mapped {",
                f"    meta l4proto {{ tcp, udp }} snat ip to {self.w} : {self.key} map @{self.map_name}",
                "  }"]

    @property
    def key(self) -> str:
        return "meta l4proto . ip saddr . th sport" + (" . ip daddr" if self.adm else "")

    @property
    def map_name(self) -> str:
        return "eim" if self.eim else "adm"

    def candidate(self, mask: int) -> str:
        """The rule that maps the flow to its own port XOR `mask`, if no mapping owns it."""
        port = "th sport" if mask == 0 else f"th sport ^ {mask:#x}"
        name = "preserved" if mask == 0 else "moved"
        free = f"meta l4proto . {port} != @owner meta l4proto . {port} != @reserved"
        record = (f"update @{self.map_name} {{ {self.key} : {port} }} "
                  f"update @owner {{ meta l4proto . {port} : ip saddr . th sport }}")
        return f'    {free} {record} counter goto mapped comment "nat.mapping_{name}"'

    def collisions(self) -> list[str]:
        return [self.candidate(mask) for mask in ALTERNATE_MASKS]

    def shared_text(self) -> str | None:
        """Once two hosts may want one port (ctx.shared_lan): the other candidate ports. They
        are nearly half of what loading a NAT costs (~0.1 ms each), and one host alone behind an
        endpoint-independent mapping never needs them: its own port is free, or its mapping."""
        if not self.eim:
            return None  # symmetric mapping has no candidates; address-dependent has them already
        lines = [f"table ip {self.ctx.table} {{", "  chain collisions {", *self.collisions(), "  }", "}"]
        return "\n".join(lines) + "\n"

    def refresh(self) -> list[str]:
        """Outbound packets keep mappings alive and record whom they talked to."""
        out = ["  chain refresh_out {", "    type filter hook postrouting priority srcnat + 10; policy accept;"]
        if self.admits_unsolicited:
            # An admitted inbound flow whose host already talks to that remote endpoint
            # through another mapping clashes with that flow inside; the kernel would then
            # rewrite its source to the router's own address. A NAT never shows that: the
            # host's answer would leave through its own mapping. Drop it before it is tracked.
            out.append(f"    iifname {self.wan} oifname {self.lan} ct status dnat ct status snat counter drop "
                       f'comment "nat.inbound_clash"')
        for proto in PROTOS:
            t = self.timeout(proto)
            leaving = f"oifname {self.wan} ip saddr {self.w} meta l4proto {proto}"
            if self.edm and (self.admits_unsolicited or self.c.hairpin):
                # Symmetric mappings are made by conntrack; learn their owner here.
                out.append(f"    {leaving} ct status snat update @owner {{ meta l4proto . {proto} sport timeout {t}s "
                           f": ct original ip saddr . ct original proto-src }}")
            else:
                out.append(f"    {leaving} meta l4proto . {proto} sport @owner update @owner {{ meta l4proto . "
                           f"{proto} sport timeout {t}s : ip saddr . {proto} sport }}")
            if self.track_remotes:
                out.append(f"    {leaving} update @seen_addr {{ meta l4proto . {proto} sport . "
                           f"ct original ip daddr timeout {t}s }}")
                if self.c.hairpin:
                    out.append(f"    iifname {self.lan} oifname {self.lan} ct status dnat meta l4proto {proto} "
                               f"update @seen_addr {{ meta l4proto . {proto} sport . ct original ip daddr "
                               f"timeout {t}s }}")
        out.append("  }")
        if self.eim or self.adm:
            table = "eim" if self.eim else "adm"
            out += ["  chain refresh_in {", "    type filter hook forward priority -5; policy accept;"]
            for proto in PROTOS:
                key = (f"meta l4proto . ip saddr . {proto} sport" if self.eim
                       else f"meta l4proto . ip saddr . {proto} sport . ip daddr")
                out.append(f"    iifname {self.lan} meta l4proto {proto} {key} @{table} "
                           f"update @{table} {{ {key} timeout {self.timeout(proto)}s : {proto} sport }}")
            out.append("  }")
        return out

    def input(self) -> list[str]:
        # Unsolicited TCP/UDP that no mapping admitted must not reach the router's own stack:
        # it would be answered (RST, port unreachable) and its conntrack entry confirmed,
        # taking the port from a later outbound flow.
        return ["  chain input {", "    type filter hook input priority filter; policy accept;",
                f"    iifname {self.wan} ct state new meta l4proto {{ tcp, udp }} counter drop "
                f'comment "nat.inbound_dropped"',
                "  }"]
