"""NAT64: our translator (csrc/nat64.c) against TAYGA, side by side, same topology, same traffic.

    .venv/bin/python benchmarks/nat64.py [--seconds 5] [--size 64] [--pps 100000] [--rounds 3]
                                         [--only ours|tayga]

Topology (namespaces made here, nothing else touched):

    client (v6 only) ── lan [router: TUN + translator] wan ── server (v4 only)

  ours   64:ff9b::/96 routed into the TUN "nat64"; the pool is the router's WAN address and the
         replies are steered into the TUN by the nft netdev rule patchbay_core.nat64 documents.
  TAYGA  Debian's tayga (stateless NAT64 with a dynamic pool), run as a subprocess inside the
         router namespace on its own TUN; it refuses 64:ff9b::/96 for lab addresses (RFC 6052
         3.1), so it gets 2001:db8:64::/96. Its pool 198.18.100.0/24 is routed back by the
         server (no kernel NAT on either path).

Traffic:
  UDP    one flow of small datagrams (--size bytes of payload) from a C sender (sendmmsg,
         compiled here), --seconds each: at full speed, then paced at --pps (an equal load
         both keep up with), counted and dropped by the server at its netdev ingress (no
         socket: the receiver's work stays out of the translator's share); then at full
         speed to a UDP socket on the server (a C recvmmsg loop), which adds the socket's
         work (and, for our UDP GSO trains, the kernel segmenting them).
  TCP    iperf3 from the client to the server, one stream, --seconds.
  --rounds alternates ours and TAYGA that many times (the machine's load moves the sender's
  rate between runs); the summary gives the ratios of the medians.

Measured: the translator's CPU time (ours: its thread, /proc/self/task/<tid>/stat; TAYGA: its
process, /proc/<pid>/stat; utime + stime, which include the kernel work its reads and writes
cause), packets it translated (the server's count), CPU µs per packet, TCP Gbit/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, TypeVar

from patchbay_core.kernel import native
from patchbay_core.kernel.namespace import NetNs
from patchbay_core.kernel.nat64 import Nat64Translator
from patchbay_core.nat64 import Nat64Config, embed_v4, steering_ruleset, tun_routes
from patchbay_core.netops import Addr, LinkSet, Route, VethPair

T = TypeVar("T")
CLK = os.sysconf("SC_CLK_TCK")
POOL = IPv4Address("198.18.0.11")  # the router's WAN address
SERVER = IPv4Address("198.18.0.20")
TAYGA_PREFIX = IPv6Network("2001:db8:64::/96")
TAYGA_POOL = "198.18.100.0/24"

BLASTER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int sink(int port, double secs) {
    /* sink PORT SECONDS: count UDP datagrams on 0.0.0.0:PORT until SECONDS after the first,
     * or 1 s without any */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int s = socket(AF_INET, SOCK_DGRAM, 0), big = 64 << 20;
    setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
    struct timeval tv = {0, 200000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (bind(s, (struct sockaddr *)&a, sizeof(a))) { perror("bind"); return 1; }
    printf("ready\n"); fflush(stdout);
    static char bufs[64][2048]; struct mmsghdr m[64]; struct iovec v[64];
    for (int i = 0; i < 64; i++) {
        v[i].iov_base = bufs[i]; v[i].iov_len = sizeof(bufs[i]);
        memset(&m[i], 0, sizeof(m[i])); m[i].msg_hdr.msg_iov = &v[i]; m[i].msg_hdr.msg_iovlen = 1;
    }
    long got = 0; double first = 0, last = now();
    for (;;) {
        int n = recvmmsg(s, m, 64, 0, NULL);
        double t = now();
        if (n > 0) { if (!got) first = t; got += n; last = t; }
        if ((got && t - first > secs) || t - last > 1.0) break;
    }
    printf("%ld\n", got);
    return 0;
}
int main(int argc, char **argv) {
    if (!strcmp(argv[1], "sink")) return sink(atoi(argv[2]), atof(argv[3]));
    /* blast DST6 PORT SECONDS SIZE [PPS]: one UDP flow through sendmmsg, at full speed in
     * batches of 64, or paced to PPS packets/s in batches of 16 */
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET6, argv[1], &a.sin6_addr);
    double secs = atof(argv[3]);
    int size = atoi(argv[4]);
    int s = socket(AF_INET6, SOCK_DGRAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a))) { perror("socket"); return 1; }
    char buf[2048]; memset(buf, 'x', sizeof(buf));
    struct mmsghdr m[64]; struct iovec v[64];
    for (int i = 0; i < 64; i++) {
        v[i].iov_base = buf; v[i].iov_len = size;
        memset(&m[i], 0, sizeof(m[i])); m[i].msg_hdr.msg_iov = &v[i]; m[i].msg_hdr.msg_iovlen = 1;
    }
    double pps = argc > 5 ? atof(argv[5]) : 0;
    long sent = 0; double start = now(), end = start + secs;
    while (now() < end) {
        int n = sendmmsg(s, m, pps > 0 ? 16 : 64, 0);
        if (n > 0) sent += n;
        if (pps > 0) {
            double next = start + sent / pps, t = now();
            if (next > t) { struct timespec d = {(time_t)(next - t), (long)((next - t - (time_t)(next - t)) * 1e9)};
                            nanosleep(&d, NULL); }
        }
    }
    printf("%ld\n", sent);
    return 0;
}
"""


def build_blaster(workdir: Path) -> Path:
    src, exe = workdir / "blast.c", workdir / "blast"
    src.write_text(BLASTER_C)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def ns_path(ns: NetNs) -> str:
    return f"/proc/{os.getpid()}/fd/{ns.fd}"


def in_ns_cmd(ns: NetNs, argv: list[str]) -> list[str]:
    """A command run inside ns (subprocesses are fine in a benchmark; the library never does this)."""
    return ["nsenter", f"--net={ns_path(ns)}", *argv]


def cpu_seconds(stat_path: str) -> float:
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


@dataclass
class Paced:
    """The same flow at a fixed rate both translators keep up with: CPU per packet at equal load."""

    pkts: int = 0
    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def us_per_pkt(self) -> float:
        return self.cpu / self.pkts * 1e6 if self.pkts else 0.0


@dataclass
class Row:
    name: str
    paced: Paced | None = None
    udp_pkts: int = 0
    udp_seconds: float = 0.0
    udp_cpu: float = 0.0
    sent: int = 0
    tcp_gbits: float = 0.0
    tcp_cpu: float = 0.0
    tcp_seconds: float = 0.0
    sock_pkts: int = 0
    sock_seconds: float = 0.0
    sock_cpu: float = 0.0
    sock_sent: int = 0

    @property
    def kpps(self) -> float:
        return self.udp_pkts / self.udp_seconds / 1e3 if self.udp_seconds else 0.0

    @property
    def us_per_pkt(self) -> float:
        return self.udp_cpu / self.udp_pkts * 1e6 if self.udp_pkts else 0.0

    @property
    def sock_us_per_pkt(self) -> float:
        return self.sock_cpu / self.sock_pkts * 1e6 if self.sock_pkts else 0.0


@contextmanager
def topology() -> Iterator[tuple[NetNs, NetNs, NetNs]]:
    base = {"net.ipv4.ping_group_range": "0 2147483647", "net.ipv6.conf.default.disable_ipv6": "1"}
    made: list[NetNs] = []
    try:
        router = NetNs.create("router", {**base, "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
                                         "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})
        made.append(router)
        client = NetNs.create("client", base)
        made.append(client)
        server = NetNs.create("server", base)
        made.append(server)
        router.apply([LinkSet(1, "lo", up=True), VethPair("lan", 16, "eth0", 16, client),
                      VethPair("wan", 17, "eth0", 16, server)])
        v6_on = {"disable_ipv6": "0", "accept_dad": "0"}
        router.write_sysctls({f"net.ipv6.conf.lan.{k}": v for k, v in v6_on.items()})
        client.write_sysctls({f"net.ipv6.conf.eth0.{k}": v for k, v in v6_on.items()})
        router.apply([Addr(16, "lan", IPv6Address("fd00:64::1"), 64), Addr(17, "wan", POOL, 24)])
        client.apply([LinkSet(1, "lo", up=True), LinkSet(16, "eth0", up=True),
                      Addr(16, "eth0", IPv6Address("fd00:64::2"), 64),
                      Route(None, via=IPv6Address("fd00:64::1"), v6=True)])
        server.apply([LinkSet(1, "lo", up=True), LinkSet(16, "eth0", up=True), Addr(16, "eth0", SERVER, 24)])
        # The server counts and drops the UDP flood at ingress; it answers TCP (iperf3) normally.
        server.nft('table netdev sink {\n chain in {\n  type filter hook ingress device "eth0" priority 0;\n'
                   "  udp dport 9 counter drop\n }\n}\n")
        yield client, router, server
    finally:
        for ns in made:
            ns.close()


def sink_count(server: NetNs, size: int) -> int:
    """Datagrams the server's ingress saw. A UDP GSO packet (ours coalesces a flow's datagrams
    into one) counts once in an nft counter, with its 28 bytes of headers once: every
    datagram is `size` bytes of payload, so the bytes tell how many there were."""
    match = re.search(r"counter packets (\d+) bytes (\d+)", server.nft("list table netdev sink"))
    if not match:
        return 0
    packets, nbytes = int(match.group(1)), int(match.group(2))
    return (nbytes - 28 * packets) // size


def run_udp_socket(row: Row, client: NetNs, server: NetNs, target: str, blaster: Path, seconds: float, size: int,
                   cpu: Callable[[], float]) -> None:
    """The same flood to a UDP socket on the server (a C recvmmsg loop): what a receiving
    application adds to the translator's share (the socket enqueue per datagram, and for our
    UDP GSO trains the kernel segmenting them for a socket without UDP GRO)."""
    sink = subprocess.Popen(in_ns_cmd(server, [str(blaster), "sink", "10", str(seconds + 0.5)]),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "ready"
        before_cpu, started = cpu(), time.monotonic()
        out = subprocess.run(in_ns_cmd(client, [str(blaster), target, "10", str(seconds), str(size)]), check=True,
                             capture_output=True, text=True)
        row.sock_seconds = time.monotonic() - started
        got = int(sink.stdout.readline().strip())
        row.sock_cpu = cpu() - before_cpu
        row.sock_pkts = got
        row.sock_sent = int(out.stdout.strip())
    finally:
        sink.kill()
        sink.wait()


def run_udp_paced(row: Row, client: NetNs, server: NetNs, target: str, blaster: Path, seconds: float, size: int,
                  pps: float, cpu: Callable[[], float]) -> None:
    paced = Paced()
    before_pkts, before_cpu, started = sink_count(server, size), cpu(), time.monotonic()
    subprocess.run(in_ns_cmd(client, [str(blaster), target, "9", str(seconds), str(size), str(pps)]), check=True,
                   capture_output=True)
    time.sleep(0.2)
    paced.seconds = time.monotonic() - started - 0.2
    paced.pkts = sink_count(server, size) - before_pkts
    paced.cpu = cpu() - before_cpu
    row.paced = paced


def run_udp(row: Row, client: NetNs, server: NetNs, target: str, blaster: Path, seconds: float, size: int,
            cpu: Callable[[], float]) -> None:
    # A short warm-up creates the binding and settles the queues; then the measured run.
    subprocess.run(in_ns_cmd(client, [str(blaster), target, "9", "0.3", str(size)]), check=True,
                   capture_output=True)
    time.sleep(0.3)
    before_pkts, before_cpu, started = sink_count(server, size), cpu(), time.monotonic()
    out = subprocess.run(in_ns_cmd(client, [str(blaster), target, "9", str(seconds), str(size)]), check=True,
                         capture_output=True, text=True)
    time.sleep(0.2)  # let the translator drain its queue
    row.udp_seconds = time.monotonic() - started - 0.2
    row.udp_pkts = sink_count(server, size) - before_pkts
    row.udp_cpu = cpu() - before_cpu
    row.sent = int(out.stdout.strip())


def run_tcp(row: Row, client: NetNs, server: NetNs, target: str, seconds: float, cpu: Callable[[], float]) -> None:
    srv = subprocess.Popen(in_ns_cmd(server, ["iperf3", "-s", "-1", "-B", str(SERVER)]), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before, started = cpu(), time.monotonic()
        out = subprocess.run(in_ns_cmd(client, ["iperf3", "-c", target, "-t", str(seconds), "-J"]), check=True,
                             capture_output=True, text=True, timeout=seconds + 30)
        row.tcp_seconds = time.monotonic() - started
        row.tcp_cpu = cpu() - before
        result: dict[str, Any] = json.loads(out.stdout)
        row.tcp_gbits = result["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.wait(timeout=10)


def bench_ours(seconds: float, size: int, pps: float, blaster: Path) -> tuple[Row, dict[str, int]]:
    row = Row("patchbay (C, TUN + GSO)")
    with topology() as (client, router, server):
        config = Nat64Config(pool4=(POOL,))
        translator = Nat64Translator(config, node="router")
        try:
            ifindex = translator.start(router.fd, "nat64")
            router.apply(tun_routes(config.prefix, ifindex))
            router.nft(steering_ruleset(config, "wan", "nat64"))
            tid = translator.thread_id
            stat = f"/proc/self/task/{tid}/stat"
            target = str(embed_v4(SERVER))
            run_udp(row, client, server, target, blaster, seconds, size, lambda: cpu_seconds(stat))
            run_udp_paced(row, client, server, target, blaster, seconds, size, pps, lambda: cpu_seconds(stat))
            run_udp_socket(row, client, server, target, blaster, seconds, size, lambda: cpu_seconds(stat))
            run_tcp(row, client, server, target, seconds, lambda: cpu_seconds(stat))
            counters = translator.counters()
        finally:
            translator.close()
    return row, counters


def bench_tayga(seconds: float, size: int, pps: float, blaster: Path, workdir: Path) -> Row:
    row = Row("TAYGA (Debian)")
    with topology() as (client, router, server):
        conf = workdir / "tayga.conf"
        (workdir / "tayga-data").mkdir(exist_ok=True)
        conf.write_text(f"tun-device tayga\nipv4-addr 198.18.100.1\nprefix {TAYGA_PREFIX}\n"
                        f"dynamic-pool {TAYGA_POOL}\ndata-dir {workdir / 'tayga-data'}\n")

        def sh(ns: NetNs, *argv: str) -> None:
            subprocess.run(in_ns_cmd(ns, list(argv)), check=True, capture_output=True)

        sh(router, "tayga", "-c", str(conf), "--mktun")
        router.write_sysctls({"net.ipv6.conf.tayga.disable_ipv6": "0"})
        sh(router, "ip", "link", "set", "tayga", "up", "txqueuelen", "10000")
        sh(router, "ip", "route", "add", str(TAYGA_PREFIX), "dev", "tayga")
        sh(router, "ip", "route", "add", TAYGA_POOL, "dev", "tayga")
        sh(server, "ip", "route", "add", TAYGA_POOL, "via", str(POOL))
        proc = subprocess.Popen(in_ns_cmd(router, ["tayga", "-c", str(conf), "--nodetach"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            # nsenter execs tayga in the same process: its pid is the one we started.
            stat = f"/proc/{proc.pid}/stat"
            target = str(embed_v4(SERVER, TAYGA_PREFIX))
            run_udp(row, client, server, target, blaster, seconds, size, lambda: cpu_seconds(stat))
            run_udp_paced(row, client, server, target, blaster, seconds, size, pps, lambda: cpu_seconds(stat))
            run_udp_socket(row, client, server, target, blaster, seconds, size, lambda: cpu_seconds(stat))
            run_tcp(row, client, server, target, seconds, lambda: cpu_seconds(stat))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return row


def in_throwaway_home(fn: Callable[[], T]) -> T:
    """Run fn on a thread whose home is a fresh namespace: the host's is never configured."""
    out: list[T] = []
    err: list[BaseException] = []

    def main() -> None:
        home = NetNs.create("home", {}, stay=True)
        try:
            out.append(fn())
        except BaseException as exc:
            err.append(exc)
        finally:
            home.close()
            native.close_home_netns_fd()

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    parser.add_argument("--pps", type=float, default=100_000, help="the paced run's rate (packets/s)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate ours and TAYGA this many times")
    parser.add_argument("--only", choices=["ours", "tayga"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nat64-bench-") as tmp:
        workdir = Path(tmp)
        blaster = build_blaster(workdir)
        rows: list[Row] = []
        counters: dict[str, int] = {}
        for _ in range(args.rounds):
            if args.only != "tayga":
                row, counters = in_throwaway_home(lambda: bench_ours(args.seconds, args.size, args.pps, blaster))
                rows.append(row)
            if args.only != "ours":
                rows.append(in_throwaway_home(
                    lambda: bench_tayga(args.seconds, args.size, args.pps, blaster, workdir)))
    print(f"UDP: {args.size}-byte payloads, one flow, {args.seconds:g} s each: at full speed, paced at "
          f"{args.pps / 1e3:.0f} kpps, and at full speed to a socket; TCP: iperf3, one stream")
    print("| translator | full speed: kpps | µs/pkt | its CPU | sent kpps | paced: kpps | µs/pkt | "
          "to a socket: kpps | µs/pkt | TCP Gbit/s | its CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p = r.paced or Paced()
        print(f"| {r.name} | {r.kpps:.0f} | {r.us_per_pkt:.2f} | {r.udp_cpu / r.udp_seconds * 100:.0f} % | "
              f"{r.sent / r.udp_seconds / 1e3:.0f} | {p.pkts / max(p.seconds, 1e-9) / 1e3:.0f} | {p.us_per_pkt:.2f} | "
              f"{r.sock_pkts / r.sock_seconds / 1e3:.0f} | {r.sock_us_per_pkt:.2f} | {r.tcp_gbits:.2f} | "
              f"{r.tcp_cpu / r.tcp_seconds * 100:.0f} % |")
    ours = [r for r in rows if not r.name.startswith("TAYGA")]
    tayga = [r for r in rows if r.name.startswith("TAYGA")]
    if ours and tayga:
        def med(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        def ratio(f: Callable[[Row], float]) -> float:
            return med([f(r) for r in ours]) / med([f(r) for r in tayga])

        print(f"\nmedians, ours / TAYGA: CPU per packet {ratio(lambda r: r.us_per_pkt):.2f} (full speed), "
              f"{ratio(lambda r: (r.paced or Paced()).us_per_pkt):.2f} (paced), "
              f"{ratio(lambda r: r.sock_us_per_pkt):.2f} (to a socket); "
              f"TCP throughput {ratio(lambda r: r.tcp_gbits):.2f}x")
    if counters:
        print("our counters:", {k: v for k, v in counters.items() if v})


if __name__ == "__main__":
    main()
