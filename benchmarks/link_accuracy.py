"""How exactly the wire delivers the impairments it is given.

    .venv/bin/python benchmarks/link_accuracy.py [--pings 200] [--packets 20000]

Delay: one device's upload gets a latency; RTT to a server behind another router, p50/p99 of
--pings echoes, minus the clean RTT, against the set value. Loss: --packets numbered UDP
datagrams, measured loss against the set value. The backend is printed first (this project's
kernels have no netem: the wire).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading

import anyio
import anyio.abc

import patchbay_core as pb


async def setup(lab: pb.Lab) -> tuple[pb.Device, pb.Device]:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", home).build()
    return server, dev


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def train(dev: pb.Device, server: pb.Device, count: int, port: int) -> int:
    got = 0
    ready = threading.Event()

    async def receive(_: pb.Device) -> None:
        nonlocal got
        sock = await anyio.create_udp_socket(local_host=str(server.ip), local_port=port)
        raw = sock.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        async with sock:
            ready.set()
            with anyio.move_on_after(2.0):
                while True:
                    await sock.receive()
                    got += 1

    async def send(_: pb.Device) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for n in range(count):
                s.sendto(b"%08d" % n, (str(server.ip), port))
                if n % 100 == 99:
                    await anyio.sleep(0.005)  # ~20k datagrams/s: the receiver keeps up

    async with anyio.create_task_group() as tg:
        tg.start_soon(server.spawn, receive)
        while not ready.is_set():
            await anyio.sleep(0.01)
        await dev.spawn(send)
    return got


async def main(pings: int, packets: int) -> None:
    async with pb.Lab(pb.LabOpts(label="link-accuracy")) as lab:
        server, dev = await setup(lab)
        clean = statistics.median((await dev.ping(server.ip, count=50, interval=0.01)).rtts_ms)
        print(f"backend: {lab._shaper.backend}; clean RTT p50 {clean:.3f} ms\n")
        print(f"{'set delay (up)':>16} {'RTT-clean p50':>14} {'p99':>8} {'error p50':>10}")
        for delay in (1, 10, 50, 100):
            await dev.set_link_condition("eth0", {"latency_ms": delay})
            rtts = [r - clean for r in (await dev.ping(server.ip, count=pings, interval=0.005)).rtts_ms]
            p50, p99 = percentile(rtts, 0.5), percentile(rtts, 0.99)
            print(f"{delay:>13} ms {p50:>11.3f} ms {p99:>5.3f} ms {p50 - delay:>+7.3f} ms")
        print(f"\n{'set loss':>10} {'measured':>10} {'error':>8}   ({packets} datagrams)")
        for n, loss in enumerate((1.0, 5.0, 10.0, 30.0)):
            await dev.set_link_condition("eth0", {"loss_pct": loss})
            got = await train(dev, server, packets, 9000 + n)
            measured = 100 * (packets - got) / packets
            stats = dev.link_stats("eth0")
            dropped = stats.dropped_loss if stats else 0
            print(f"{loss:>8.1f} % {measured:>8.2f} % {measured - loss:>+6.2f} pp   (wire dropped {dropped})")
            await dev.set_link_condition("eth0", None)  # a fresh wire and counters for the next


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--packets", type=int, default=20000)
    args = parser.parse_args()
    anyio.run(main, args.pings, args.packets)
