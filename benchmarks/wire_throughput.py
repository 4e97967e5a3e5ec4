"""Forwarding through the wire: throughput, packets/s and CPU per Gbit, side by side.

    .venv/bin/python benchmarks/wire_throughput.py [--seconds 5] [--repeat 3]

A device behind one router sends to a server behind another with iperf3 (TCP: MSS 1448,
1500-byte IP packets on the wire; UDP: 1472-byte and 64-byte datagrams). Rows:
  no wire             the device's link untouched (the kernel alone)
  wire, zero          the wire engaged on the device's upload with every impairment at zero
                      (whole GSO packets pass, as through the kernel)
  wire, frames: rate  the wire engaged with a rate too high to bind (100 Gbit/s)
  wire, frames: loss  the wire engaged with 0.0001 % loss
                      in both: offloads off, the kernel segments, every 1500-byte frame is
                      read, decided on and sent by the wire
kpps is counted where the packets pass: the wire's own tx counter (frames, or GSO packets
when they pass whole), or, without a wire, the device's eth0 tx counter (a GSO packet counts
once). CPU per Gbit is the wire threads' own CPU time ("pbwire", "pbwire-tx") per Gbit
carried; the kernel's forwarding behind each frame runs in the send calls and is included.
Each cell is the median of --repeat runs (this VM is shared: single runs vary by +-30 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess

import anyio

import patchbay_core as pb

CLK = os.sysconf("SC_CLK_TCK")


def wire_thread_cpu() -> float:
    """CPU seconds of this process's wire threads."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if name.startswith("pbwire"):
            total += (int(fields[11]) + int(fields[12])) / CLK
    return total


async def iperf(dev: pb.Device, server: pb.Device, seconds: int, extra: list[str]) -> dict:
    srv = await server.spawn_command(["iperf3", "-s", "-1", "-B", str(server.ip)], stdout=subprocess.DEVNULL)
    await anyio.sleep(0.3)
    proc = await dev.spawn_command(["iperf3", "-c", str(server.ip), "-t", str(seconds), "-J", *extra],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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


async def eth0_tx_packets(lab: pb.Lab, dev: pb.Device) -> int:
    state = dev._state
    links = await lab._check_open().run(state.ns.links)
    return next(link.tx_packets for link in links if link.ifindex == state.ifaces["eth0"].ifindex)


async def measure(lab: pb.Lab, dev: pb.Device, server: pb.Device, limits: pb.LinkLimits | None, seconds: int,
                  extra: list[str]) -> tuple[float, float, float]:
    """(Gbit/s received, kpps where the packets pass, wire CPU s per Gbit)."""
    await engage(lab, dev, None)  # a fresh wire (and counters) for each run
    await engage(lab, dev, limits)
    cpu0, tx0 = wire_thread_cpu(), await eth0_tx_packets(lab, dev)
    result = await iperf(dev, server, seconds, extra)
    cpu = wire_thread_cpu() - cpu0
    end = result["end"]
    summary = end.get("sum_received") or end.get("sum")
    gbit = summary["bits_per_second"] / 1e9
    duration = end.get("sum_sent", summary)["seconds"]
    stats = dev.link_stats("eth0")
    packets = stats.tx if stats is not None else await eth0_tx_packets(lab, dev) - tx0
    per_gbit = cpu / (gbit * duration) if limits is not None and gbit else 0.0
    return gbit, packets / duration / 1000, per_gbit


async def main(seconds: int, repeat: int) -> None:
    rows = [("no wire", None), ("wire, zero", pb.LinkLimits()),
            ("wire, frames: rate", pb.LinkLimits(rate_kbit=100_000_000)),
            ("wire, frames: loss", pb.LinkLimits(loss_pct=0.0001))]
    tests = [("TCP", []), ("UDP 1472 B", ["-u", "-b", "0", "-l", "1472"]), ("UDP 64 B", ["-u", "-b", "0", "-l", "64"])]
    print(f"{'path':<20} {'traffic':<11} {'Gbit/s':>8} {'kpps':>8} {'wire CPU s/Gbit':>16}   (runs, Gbit/s)")
    async with pb.Lab(pb.LabOpts(label="wire-throughput")) as lab:
        dc = await lab.add_router("dc").build()
        home = await lab.add_router("home").build()
        server = await lab.add_device("server").iface("eth0", dc).build()
        dev = await lab.add_device("dev").iface("eth0", home).build()
        assert (await dev.ping(server.ip)).received == 1
        for name, limits in rows:
            for test, extra in tests:
                runs = [await measure(lab, dev, server, limits, seconds, extra) for _ in range(repeat)]
                gbit, kpps, per_gbit = (statistics.median(r[i] for r in runs) for i in range(3))
                cpu_text = f"{per_gbit:.2f}" if limits is not None else "-"
                each = " ".join(f"{r[0]:.2f}" for r in runs)
                print(f"{name:<20} {test:<11} {gbit:>8.2f} {kpps:>8.0f} {cpu_text:>16}   ({each})", flush=True)
        await engage(lab, dev, None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.seconds, args.repeat)
