"""IPv6 provisioning in a lab: router advertisements and duplicate address detection.

Ipv6Provisioning.RA_DRIVEN: a device's default IPv6 route is learnt the way hosts learn it.
The device's kernel accepts router advertisements (and solicits one as its interface comes
up); the lab then sends a real Router Advertisement (ICMPv6 type 134) from the router's LAN
link-local address fe80::1 to the device, and the device's kernel installs `default via
fe80::1 dev <iface> proto ra`. Events, in order: `rs_sent` (the device's interface came up
soliciting), `ra_sent`, `ra_route_installed`. STATIC installs `default via <router's global
address>` itself. Addresses are assigned statically in both modes (no SLAAC).

Ipv6Dad.ENABLED: addresses go through the kernel's DAD; building waits until none is
tentative any more (and fails, naming the address, if DAD found a duplicate).
"""

from __future__ import annotations

import socket
import struct
import time
from ipaddress import IPv6Address

from .errors import PatchbayError
from .kernel import native
from .kernel.namespace import NetNs
from .kernel.rtnl import IFA_F_DADFAILED, RTPROT_RA, RouteInfo

ICMPV6_ROUTER_ADVERTISEMENT = 134
ROUTER_LIFETIME_S = 1800
ND_OPT_MTU = 5
RA_TIMEOUT_S = 3.0
RA_RETRY_S = 0.25  # a first RA can meet a link that is just coming up: send another
ALL_NODES = IPv6Address("ff02::1")
READVERTISE_S = 600.0  # radvd's MaxRtrAdvInterval: well within ROUTER_LIFETIME_S
DAD_TIMEOUT_S = 10.0


def router_advertisement(mtu: int = 0) -> bytes:
    """An RA announcing a default router (no prefixes: addresses are assigned statically).
    The kernel fills in the checksum of raw ICMPv6 sockets."""
    packet = struct.pack("!BBHBBHII", ICMPV6_ROUTER_ADVERTISEMENT, 0, 0, 64, 0, ROUTER_LIFETIME_S, 0, 0)
    if mtu:
        packet += struct.pack("!BBHI", ND_OPT_MTU, 1, 0, mtu)
    return packet


def send_router_advertisement(router_ns: NetNs, lan_ifindex: int, to: IPv6Address, mtu: int = 0) -> None:
    """Send one RA out of the router's LAN interface to `to` (a link-local address there)."""
    fd = native.socket_in(router_ns.fd, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, router_ns.node)
    with socket.socket(fileno=fd) as sock:
        # RFC 4861: neighbour discovery messages carry hop limit 255, so hosts know they are local.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.sendto(router_advertisement(mtu), (str(to), 0, 0, lan_ifindex))


def ra_route(ns: NetNs, ifindex: int) -> RouteInfo | None:
    """The default route the device's kernel learnt from an RA on `ifindex`, if any."""
    for route in ns.routes():
        if route.family == socket.AF_INET6 and route.dst == "default" and route.oif == ifindex \
                and route.proto == RTPROT_RA:
            return route
    return None


def advertise_until_learnt(router_ns: NetNs, lan_ifindex: int, device_ns: NetNs, ifindex: int,
                           to: IPv6Address, mtu: int = 0, timeout: float = RA_TIMEOUT_S) -> tuple[RouteInfo, int]:
    """Send RAs to `to` (unicast first, then to all nodes, as routers repeat unsolicited ones)
    until the device's kernel has the default route; returns it and how many RAs it took."""
    deadline = time.monotonic() + timeout
    sent = 0
    while True:
        send_router_advertisement(router_ns, lan_ifindex, to if sent == 0 else ALL_NODES, mtu)
        sent += 1
        resend = time.monotonic() + RA_RETRY_S
        while time.monotonic() < min(resend, deadline):
            route = ra_route(device_ns, ifindex)
            if route is not None:
                return route, sent
            time.sleep(0.001)
        if time.monotonic() >= deadline:
            raise PatchbayError(f"{device_ns.node}: no default route from {sent} router advertisements in "
                                f"{timeout:.0f}s")


def wait_dad(ns: NetNs, timeout: float = DAD_TIMEOUT_S) -> None:
    """Wait until the kernel's duplicate address detection has passed every IPv6 address."""
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for addr in ns.addrs():
            if addr.ip.version != 6:
                continue
            if addr.flags & IFA_F_DADFAILED:
                raise PatchbayError(f"{ns.node}: duplicate address detection failed for {addr.ip}")
            if addr.tentative:
                pending.append(addr.ip)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise PatchbayError(f"{ns.node}: duplicate address detection still running for "
                                f"{', '.join(map(str, pending))} after {timeout:.0f}s")
        time.sleep(0.02)
