"""ICMP echo without a `ping` binary: unprivileged ICMP sockets ("ping sockets").

Runs on the node's own asyncio loop. Every lab namespace sets net.ipv4.ping_group_range so
these sockets are allowed; the kernel fills in the echo identifier and checksum.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129


@dataclass(frozen=True)
class PingResult:
    """`error`: why echoes were lost when the kernel said so (e.g. "Network is unreachable")."""

    sent: int
    received: int
    rtts_ms: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0


async def ping(dst: str | IPv4Address | IPv6Address, count: int = 1, timeout: float = 2.0,
               interval: float = 0.2) -> PingResult:
    """Send `count` echo requests to `dst`, each waiting up to `timeout` s for its reply.
    Echoes the kernel refuses (no route) or answered by an ICMP error count as lost."""
    addr = ip_address(str(dst))
    v6 = addr.version == 6
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    request, reply = (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) if v6 else (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    error: str | None = None
    with socket.socket(family, socket.SOCK_DGRAM, proto) as sock:
        sock.setblocking(False)
        try:
            sock.connect((str(addr), 0))
        except OSError as exc:
            return PingResult(sent=count, received=0, error=exc.strerror)
        for seq in range(1, count + 1):
            if seq > 1:
                await asyncio.sleep(interval)
            packet = struct.pack("!BBHHH", request, 0, 0, 0, seq) + b"patchbay-ping"
            started = time.monotonic()
            try:
                await loop.sock_sendall(sock, packet)
            except OSError as exc:
                error = exc.strerror
                continue
            deadline = started + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
                except TimeoutError:
                    break
                except OSError as exc:  # an ICMP error came back (host unreachable, ...)
                    error = exc.strerror
                    break
                if len(data) >= 8 and data[0] == reply and struct.unpack_from("!H", data, 6)[0] == seq:
                    rtts.append((time.monotonic() - started) * 1000.0)
                    break
    return PingResult(sent=count, received=len(rtts), rtts_ms=rtts, error=error)
