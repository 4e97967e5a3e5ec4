"""Forwarding through the wire: throughput, packets/s and CPU per Gbit, side by side.

    .venv/bin/python benchmarks/wire_throughput.py [--seconds 5]

A device behind one router sends to a server behind another with iperf3 (TCP: MSS 1448,
1500-byte IP packets on the wire; UDP: 1472-byte and 64-byte datagrams). Rows:
  no wire           the device's link untouched (the kernel alone)
  wire, zero        the wire engaged on the device's upload with every impairment at zero
                    (whole GSO packets pass, as through the kernel)
  wire, per packet  the wire engaged with a rate too high to bind: offloads off, the kernel
                    segments, every 1500-byte frame is read, decided on and sent by the wire
CPU per Gbit is the wire thread's own CPU time per Gbit carried (what it costs beside the
kernel's forwarding work, part of which runs in its send calls).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import anyio

import patchbay_core as pb

CLK = os.sysconf("SC_CLK_TCK")


def wire_thread_cpu() -> float:
    """CPU seconds of this process's unnamed C threads (the wires run there)."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if not name.startswith("patchbay-") and tid != str(os.getpid()):
            total += (int(fields[11]) + int(fields[12])) / CLK
    return total


async def iperf(dev: pb.Device, server: pb.Device, seconds: int, extra: list[str]) -> dict:
    srv = await server.spawn_command(["iperf3", "-s", "-1", "-B", str(server.ip)], stdout=subprocess.DEVNULL)
    await anyio.sleep(0.3)
    proc = await dev.spawn_command(["iperf3", "-c", str(server.ip), "-t", str(seconds), "-J", *extra],
                                   stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = b"".join([c async for c in proc.stdout])
    await proc.wait()
    await srv.wait()
    return json.loads(out)


async def engage(lab: pb.Lab, dev: pb.Device, limits: pb.LinkLimits | None) -> None:
    # A clean condition normally detaches the wire; to measure the wire itself with zero
    # impairment, attach it directly with all-zero limits.
    state = dev._state
    iface = state.ifaces["eth0"]
    await lab._check_open().run(lab._shaper.set, ("up", dev.name, "eth0"), state.ns, iface.ifindex, "eth0", 1,
                                None, limits, 1500)


async def main(seconds: int) -> None:
    rows = [("no wire", None), ("wire, zero", pb.LinkLimits()),
            ("wire, per packet", pb.LinkLimits(rate_kbit=100_000_000))]
    tests = [("TCP", []), ("UDP 1472 B", ["-u", "-b", "0", "-l", "1472"]), ("UDP 64 B", ["-u", "-b", "0", "-l", "64"])]
    print(f"{'path':<18} {'traffic':<11} {'Gbit/s':>8} {'kpps':>8} {'wire CPU s/Gbit':>16}")
    async with pb.Lab(pb.LabOpts(label="wire-throughput")) as lab:
        dc = await lab.add_router("dc").build()
        home = await lab.add_router("home").build()
        server = await lab.add_device("server").iface("eth0", dc).build()
        dev = await lab.add_device("dev").iface("eth0", home).build()
        for name, limits in rows:
            for test, extra in tests:
                await engage(lab, dev, None)  # a fresh wire (and counters) for each test
                await engage(lab, dev, limits)
                cpu0 = wire_thread_cpu()
                result = await iperf(dev, server, seconds, extra)
                cpu = wire_thread_cpu() - cpu0
                end = result["end"]
                summary = end.get("sum_received") or end.get("sum")
                gbit = summary["bits_per_second"] / 1e9
                if summary.get("packets"):
                    pps = (summary["packets"] - summary.get("lost_packets", 0)) / summary["seconds"]
                else:  # TCP: segments of 1448 bytes delivered per second
                    pps = summary["bits_per_second"] / (1448 * 8)
                per_gbit = (cpu / (gbit * summary["seconds"])) if limits is not None and gbit else 0
                cpu_text = f"{per_gbit:.2f}" if limits is not None else "-"
                print(f"{name:<18} {test:<11} {gbit:>8.2f} {pps / 1000:>8.0f} {cpu_text:>16}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    anyio.run(main, parser.parse_args().seconds)
