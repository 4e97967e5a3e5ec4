"""Regions: groups of routers far from each other.

Each region is a router namespace on the IX; a router placed in a region hangs off it, so
traffic between a region and regionless routers crosses the IX without penalty. Regions are
joined by point-to-point links (169.254.x.y/30) whose two directions each run through a wire
with the link's latency. A region routes the other regions' prefixes along the path of least
latency over unbroken links, and blackholes them when no such path exists (never falling back
to the IX, which would skip the latency).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from .link import LinkLimits

LINK_BLOCK = IPv4Network("169.254.0.0/16")


@dataclass(frozen=True)
class RegionLink:
    """A link between two regions; every value applies to each direction (one-way)."""

    latency_ms: int
    jitter_ms: int = 0
    loss_pct: float = 0.0
    rate_kbit: int = 0

    @classmethod
    def good(cls, latency_ms: int) -> RegionLink:
        return cls(latency_ms)

    def limits(self) -> LinkLimits:
        return LinkLimits(latency_ms=self.latency_ms, jitter_ms=self.jitter_ms, loss_pct=self.loss_pct,
                          rate_kbit=self.rate_kbit)


# One-way latencies between continents' usual cloud regions, in ms (public RTT tables halved).
DEFAULT_REGIONS = ("us", "eu", "asia", "sa", "oceania")
DEFAULT_LATENCIES = {
    ("us", "eu"): 40, ("us", "asia"): 75, ("us", "sa"): 60, ("us", "oceania"): 80,
    ("eu", "asia"): 110, ("eu", "sa"): 100, ("eu", "oceania"): 140,
    ("asia", "sa"): 150, ("asia", "oceania"): 60, ("sa", "oceania"): 130,
}


def link_addresses(n: int) -> tuple[IPv4Address, IPv4Address]:
    """The two ends of the n-th region link (n from 0): a /30 out of 169.254.0.0/16."""
    base = int(LINK_BLOCK.network_address) + 4 * n
    if base + 3 > int(LINK_BLOCK.broadcast_address):
        raise IndexError(n)
    return IPv4Address(base + 1), IPv4Address(base + 2)


def first_hops(graph: dict[str, dict[str, float]], source: str) -> dict[str, str]:
    """For every region reachable from `source`, the neighbour to send through (Dijkstra on
    latency; ties go to fewer hops)."""
    best: dict[str, tuple[float, int]] = {source: (0.0, 0)}
    hop: dict[str, str] = {}
    queue: list[tuple[float, int, str, str]] = [(0.0, 0, source, "")]
    done: set[str] = set()
    while queue:
        cost, hops, node, first = heapq.heappop(queue)
        if node in done:
            continue
        done.add(node)
        if node != source:
            hop[node] = first
        for neighbour, weight in sorted(graph.get(node, {}).items()):
            candidate = (cost + weight, hops + 1)
            if neighbour not in best or candidate < best[neighbour]:
                best[neighbour] = candidate
                heapq.heappush(queue, (*candidate, neighbour, first or neighbour))
    return hop
