"""NAT64 addressing (RFC 6052), the translator's configuration, and how a router wires it.

Pure: no side effects, nothing imported from the C core. The translator itself is
`patchbay_core.kernel.nat64.Nat64Translator` (C, csrc/nat64.c).

    >>> embed_v4("198.18.0.11")
    IPv6Address('64:ff9b::c612:b')

How a router runs NAT64 (what `netplan`/`lab` do for `NatV6Mode.NAT64`; the live test in
tests/test_nat64_translator.py builds exactly this, by hand):

  v6 client ── lan ┤ router ├ wan ── v4 server          "nat64": the TUN the translator reads
                   │  nat64 │                           A: the router's WAN address = the pool

  1. Sysctls of the router: `net.ipv4.ip_forward=1`, `net.ipv6.conf.all.forwarding=1`, IPv6
     enabled on the LAN (`net.ipv6.conf.<lan>.disable_ipv6=0`), and `tun_sysctls(tun)` for the
     TUN once it exists (IPv6 on, no link-local address, `accept_local=1` and `rp_filter=0`:
     the TUN writes IPv4 packets whose source is the router's own WAN address, which the
     kernel otherwise drops as martians). `Nat64Translator.start()` writes these itself.
  2. Start the translator with `Nat64Config(pool4=(A,), mtu4=<wan mtu>, mtu6=<lan mtu>)` in the
     router's namespace; it makes the TUN (up, MTU mtu6).
  3. Route the prefix into the TUN: `tun_routes(prefix, tun_ifindex)` (a v6 route, dev nat64).
     IPv4 needs no route: translated packets leave by the router's default route; their source
     is A.
  4. Steer the replies: `steering_ruleset(config, wan, tun)` is one nft transaction. A netdev
     ingress chain on the WAN sends what arrives for A on the NAT64 port ranges (UDP/TCP
     ports, ICMP echo-reply identifiers, and ICMP errors quoting such a packet) into the TUN
     with `fwd ip to A device "nat64"`: a neighbour-level forward that hands the TUN the bare
     IP packet (plain `fwd to` would push the Ethernet header in front of it). It runs before
     conntrack, so those packets never meet the router's NAT or firewall; everything else
     for A (the router's own traffic, a v4 LAN's NAT) goes on as before. A raw-priority
     prerouting chain marks what the TUN writes `notrack`: conntrack only ever sees one
     direction of those flows, and the router's masquerade must not rewrite their ports.
  5. Keep the port ranges apart: the translator's ranges (61001-65535 by default, above
     Linux's ephemeral range 32768-60999) must not be used by the router's own sockets nor by
     its IPv4 masquerade (`masquerade to :1024-61000` if the router also NATs a v4 LAN).
  6. Firewall: translated v4 packets come in on the TUN, are `notrack` (ct state untracked)
     and must be accepted in the forward chain (`iifname "nat64" accept`); v6 packets from
     the TUN to the LAN are the replies of flows the translator has bindings for (it is the
     stateful filter for them, endpoint-independent): accept `iifname "nat64"` towards the
     LAN as well, or let conntrack see them (it tracks both directions on the v6 side).

What it looks like on the wire: the router is two hops for a v6 client, the kernel's forward
into the TUN and the translator (whose Time Exceeded comes from `self6`, by default the first
pool address embedded in the prefix); the kernel's forward out of the TUN is the
translation's one TTL decrement (see csrc/nat64.c). Path MTU discovery works both ways: the
translator answers Packet Too Big / Fragmentation Needed against mtu4/mtu6 itself, and
translates those errors (with the RFC 7915 MTU adjustment) when routers beyond send them.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from .netops import Route

__all__ = [
    "DEFAULT_PORTS",
    "WELL_KNOWN_PREFIX",
    "Nat64Config",
    "embed_v4",
    "extract_v4",
    "steering_ruleset",
    "tun_routes",
    "tun_sysctls",
]

WELL_KNOWN_PREFIX = IPv6Network("64:ff9b::/96")
# Above Linux's default ephemeral port range (32768-60999), so a router's own sockets never
# take a port the translator hands out.
DEFAULT_PORTS = (61001, 65535)

# RFC 6052 section 2.2: the byte positions of the IPv4 address for each prefix length
# (byte 8, bits 64..71, is the reserved "u" octet and stays zero).
_POSITIONS: dict[int, tuple[int, int, int, int]] = {
    32: (4, 5, 6, 7),
    40: (5, 6, 7, 9),
    48: (6, 7, 9, 10),
    56: (7, 9, 10, 11),
    64: (9, 10, 11, 12),
    96: (12, 13, 14, 15),
}


def _prefix(prefix: IPv6Network | str) -> IPv6Network:
    net = IPv6Network(prefix)
    if net.prefixlen not in _POSITIONS:
        raise ValueError(f"NAT64 prefix {net}: RFC 6052 allows lengths 32, 40, 48, 56, 64 and 96")
    return net


def embed_v4(ipv4: IPv4Address | str, prefix: IPv6Network | str = WELL_KNOWN_PREFIX) -> IPv6Address:
    """The IPv6 address a NAT64 client uses to reach `ipv4` (RFC 6052). Any IPv4 address is
    accepted with any prefix, the well-known one included (labs use 198.18.0.0/15)."""
    net = _prefix(prefix)
    raw = bytearray(net.network_address.packed)
    for pos, byte in zip(_POSITIONS[net.prefixlen], IPv4Address(ipv4).packed, strict=True):
        raw[pos] = byte
    return IPv6Address(bytes(raw))


def extract_v4(ipv6: IPv6Address | str, prefix: IPv6Network | str = WELL_KNOWN_PREFIX) -> IPv4Address:
    """The IPv4 address embedded in `ipv6`; ValueError when `ipv6` is outside `prefix`."""
    net = _prefix(prefix)
    addr = IPv6Address(ipv6)
    if addr not in net:
        raise ValueError(f"{addr} is not in the NAT64 prefix {net}")
    raw = addr.packed
    return IPv4Address(bytes(raw[pos] for pos in _POSITIONS[net.prefixlen]))


@dataclass(frozen=True)
class Nat64Config:
    """What the translator is told. Timeouts in seconds; port ranges inclusive.

    pool4: the IPv4 addresses clients are mapped to (1..16; usually the router's WAN
    address). mtu4 / mtu6: the MTUs of the IPv4 egress (WAN) and IPv6 egress (LAN); the TUN
    gets mtu6. self6: the source of the ICMPv6 errors the translator sends itself (None: the
    first pool address embedded in the prefix). decrement_ttl: see csrc/nat64.c (False when
    the kernel's forwarding out of the TUN does the decrement, the wiring documented above).
    """

    pool4: tuple[IPv4Address, ...]
    prefix: IPv6Network = WELL_KNOWN_PREFIX
    udp_ports: tuple[int, int] = DEFAULT_PORTS
    tcp_ports: tuple[int, int] = DEFAULT_PORTS
    icmp_ids: tuple[int, int] = DEFAULT_PORTS
    udp_timeout: int = 300
    tcp_established_timeout: int = 7200
    tcp_transitory_timeout: int = 240
    icmp_timeout: int = 60
    max_bindings: int = 65536
    mtu4: int = 1500
    mtu6: int = 1500
    self6: IPv6Address | None = None
    decrement_ttl: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool4", tuple(IPv4Address(a) for a in self.pool4))
        object.__setattr__(self, "prefix", _prefix(self.prefix))
        if not 1 <= len(self.pool4) <= 16:
            raise ValueError(f"NAT64 pool: {len(self.pool4)} addresses, need 1 to 16")
        for name in ("udp_ports", "tcp_ports", "icmp_ids"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 65535:
                raise ValueError(f"NAT64 {name} {lo}-{hi}: need 1 <= min <= max <= 65535")
        for name in ("udp_timeout", "tcp_established_timeout", "tcp_transitory_timeout", "icmp_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"NAT64 {name} must be at least 1 s")
        if not 1 <= self.max_bindings <= 1 << 24:
            raise ValueError(f"NAT64 max_bindings {self.max_bindings}: need 1 to {1 << 24}")
        if not 68 <= self.mtu4 <= 65535 or not 1280 <= self.mtu6 <= 65535:
            raise ValueError(f"NAT64 MTUs: IPv4 68..65535, IPv6 1280..65535 (got {self.mtu4}, {self.mtu6})")


def tun_sysctls(tun: str) -> dict[str, str]:
    """The TUN's sysctls (see the module docstring, step 1), written before it comes up. No
    link-local address (so no DAD), and not a router on that link: it leaves the all-routers
    groups it joined at creation, quietly (MLDv1 sends no Done for a group it never
    reported), so the kernel sends no MLD into it. Forwarding through it follows
    net.ipv6.conf.all.forwarding regardless."""
    return {
        f"net.ipv6.conf.{tun}.addr_gen_mode": "1",
        f"net.ipv6.conf.{tun}.force_mld_version": "1",
        f"net.ipv6.conf.{tun}.forwarding": "0",
        f"net.ipv6.conf.{tun}.accept_ra": "0",
        f"net.ipv6.conf.{tun}.disable_ipv6": "0",
        f"net.ipv4.conf.{tun}.accept_local": "1",
        f"net.ipv4.conf.{tun}.rp_filter": "0",
    }


def tun_routes(prefix: IPv6Network, tun_ifindex: int, tun: str = "nat64") -> list[Route]:
    """The route that sends the NAT64 prefix into the TUN (step 3)."""
    return [Route(IPv6Network(prefix), oif=tun_ifindex, label=tun, v6=True)]


def steering_ruleset(config: Nat64Config, wan: str, tun: str = "nat64", table: str = "nat64") -> str:
    """nft text (one transaction) that steers replies for the pool into the TUN and keeps
    conntrack off translated packets (steps 4 and 6). Deleting the two tables undoes it."""
    udp = f"{config.udp_ports[0]}-{config.udp_ports[1]}"
    tcp = f"{config.tcp_ports[0]}-{config.tcp_ports[1]}"
    icmp = f"{config.icmp_ids[0]}-{config.icmp_ids[1]}"
    errors = "icmp type { destination-unreachable, time-exceeded, parameter-problem }"
    lines = [
        f"table netdev {table} {{",
        "  chain steer {",
        f'    type filter hook ingress device "{wan}" priority -500;',
    ]
    for addr in config.pool4:
        to = f'fwd ip to {addr} device "{tun}"'
        lines += [
            f"    ip daddr {addr} udp dport {udp} {to}",
            f"    ip daddr {addr} tcp dport {tcp} {to}",
            f"    ip daddr {addr} icmp type echo-reply icmp id {icmp} {to}",
            # ICMP errors quoting one of our packets: the quoted IPv4 header starts 8 bytes
            # into the ICMP message (its protocol at bit 136); with a 20-byte quoted header
            # its source port / echo identifier sits at bit 224 / 256.
            f"    ip daddr {addr} {errors} @th,136,8 17 @th,224,16 {udp} {to}",
            f"    ip daddr {addr} {errors} @th,136,8 6 @th,224,16 {tcp} {to}",
            f"    ip daddr {addr} {errors} @th,136,8 1 @th,256,16 {icmp} {to}",
        ]
    lines += [
        "  }",
        "}",
        f"table ip {table}_notrack {{",
        "  chain pre {",
        "    type filter hook prerouting priority raw;",
        f'    iifname "{tun}" notrack',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
