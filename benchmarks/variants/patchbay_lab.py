"""(a) patchbay_core: N routers each with one device, or (--star) one router with N devices;
with --nat every router is a HOME NAT."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

import patchbay_core as pb


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main(n: int, star: bool, nat: bool) -> None:
    # From before the lab exists: its IX namespace (and the namespaces its factory prepares
    # ahead of demand) count, as the other variants' IX setup counts for them.
    started = time.perf_counter()
    lab = await pb.Lab.create(pb.LabOpts(label="bench"))
    rss_before = rss_kb()  # per node: what the nodes add to an empty lab
    if star:
        router = await lab.add_router("r").downstream_cidr("10.0.0.0/16").build()
        for i in range(n):
            await lab.add_device(f"d{i}").iface("eth0", router).build()
    else:
        for i in range(n):
            builder = lab.add_router(f"r{i}")
            if nat:
                builder = builder.nat(pb.Nat.HOME)
            router = await builder.build()
            await lab.add_device(f"d{i}").iface("eth0", router).build()
    built = time.perf_counter()
    nodes = len(lab.routers()) + len(lab.devices())
    rss_per_node = (rss_kb() - rss_before) / nodes
    await lab.close()
    closed = time.perf_counter()
    print(f"{(built - started) * 1e3:.2f} {(closed - built) * 1e3:.2f} {rss_per_node:.1f}")


if __name__ == "__main__":
    sizes = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    anyio.run(main, sizes[0], "--star" in sys.argv, "--nat" in sys.argv)
