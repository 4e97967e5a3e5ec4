"""Packet capture in the C core: pcapng files of real traffic between two devices."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import anyio
import pytest
from scapy.layers.inet import UDP  # also registers Ethernet for the readers
from scapy.utils import PcapNgReader, rdpcap

import patchbay_core as pb
from patchbay_core.capture import Capture, capture_path
from patchbay_core.kernel.capture import LINKTYPE_ETHERNET, PacketCapture

PORT = 9999
pytestmark = pytest.mark.anyio


async def two_devices(lab: pb.Lab) -> tuple[pb.Device, pb.Device]:
    r = await lab.add_router("r").build()
    a = await lab.add_device("a").iface("eth0", r).build()
    b = await lab.add_device("b").iface("eth0", r).build()
    return a, b


def echo_server(b: pb.Device, count: int) -> object:
    """b answers `count` datagrams with "re-" + payload; returns the future of what it got."""

    def bind() -> socket.socket:
        # Made inside b (a socket belongs to the namespace it was made in), bound before a sends.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(b.ip), PORT))
        return sock

    sock = b.run_sync(bind)

    def serve() -> list[bytes]:
        sock.settimeout(5)
        got = []
        with sock:
            for _ in range(count):
                data, addr = sock.recvfrom(2048)
                got.append(data)
                sock.sendto(b"re-" + data, addr)
        return got

    return b.spawn_thread(serve)


def send(a: pb.Device, b: pb.Device, payloads: list[bytes]) -> None:
    def client() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for p in payloads:
                s.sendto(p, (str(b.ip), PORT))
                s.recvfrom(2048)

    a.run_sync(client)


def udp_payloads(path: Path) -> list[bytes]:
    return [bytes(p[UDP].payload) for p in rdpcap(str(path)) if UDP in p and PORT in (p[UDP].sport, p[UDP].dport)]


async def wait_packets(cap: PacketCapture | Capture, n: int) -> None:
    with anyio.fail_after(5):
        while cap.packets < n:
            await anyio.sleep(0.01)


async def test_both_directions_of_udp_between_two_devices(lab: pb.Lab, tmp_path: Path) -> None:
    a, b = await two_devices(lab)
    path = tmp_path / "a.pcapng"
    t0 = time.time()
    cap = PacketCapture.start(a.ns_fd, "eth0", path, node="a")
    assert cap.linktype == LINKTYPE_ETHERNET
    server = echo_server(b, 3)
    send(a, b, [b"hello-0", b"hello-1", b"hello-2"])
    assert server.result(timeout=5) == [b"hello-0", b"hello-1", b"hello-2"]  # type: ignore[attr-defined]
    await wait_packets(cap, 6)
    cap.stop()
    t1 = time.time()
    assert udp_payloads(path) == [b"hello-0", b"re-hello-0", b"hello-1", b"re-hello-1", b"hello-2", b"re-hello-2"]
    with PcapNgReader(str(path)) as reader:
        packets = [p for p in reader if UDP in p]
    # epb_flags: what a sent is outbound (2), what it got inbound (1); if_name names the interface.
    assert [p.direction for p in packets] == [2, 1] * 3
    assert {p.sniffed_on for p in packets} == {"eth0"}
    stamps = [float(p.time) for p in packets]
    assert stamps == sorted(stamps) and t0 - 1 < stamps[0] and stamps[-1] < t1 + 1
    assert cap.packets >= 6 and cap.dropped == 0


async def test_the_file_is_valid_while_the_capture_runs(lab: pb.Lab, tmp_path: Path) -> None:
    a, b = await two_devices(lab)
    cap = await Capture.start(a.ns_fd, "a", "eth0", capture_path(tmp_path, "device", "a", "eth0"))
    assert cap.path == tmp_path / "device.a.eth0.pcapng"
    assert rdpcap(str(cap.path)) is not None  # header blocks only: already a valid, empty file
    server = echo_server(b, 4)
    send(a, b, [b"first", b"second"])
    await wait_packets(cap, 4)
    assert cap.running
    assert udp_payloads(cap.path) == [b"first", b"re-first", b"second", b"re-second"]
    send(a, b, [b"third", b"fourth"])
    server.result(timeout=5)  # type: ignore[attr-defined]
    await cap.stop()
    assert udp_payloads(cap.path)[4:] == [b"third", b"re-third", b"fourth", b"re-fourth"]


async def test_stopping_twice_and_concurrently_is_safe(lab: pb.Lab, tmp_path: Path) -> None:
    a, _b = await two_devices(lab)
    stopped: list[Capture] = []
    cap = await Capture.start(a.ns_fd, "a", "eth0", tmp_path / "x.pcapng", on_stop=stopped.append)
    await a.ping(lab.device("b").ip)
    async with anyio.create_task_group() as tg:
        tg.start_soon(cap.stop)
        tg.start_soon(cap.stop)
    await cap.stop()
    cap.stop_sync()
    assert stopped == [cap] and not cap.running
    packets = cap.packets
    assert packets >= 2 and packets == len(rdpcap(str(cap.path)))
    raw = PacketCapture.start(a.ns_fd, "eth0", tmp_path / "y.pcapng")
    raw.stop()
    raw.stop()
    assert raw.packets == 0 and not raw.running


async def test_a_bad_interface_name_says_what_the_node_has(lab: pb.Lab, tmp_path: Path) -> None:
    a, _b = await two_devices(lab)
    with pytest.raises(pb.TopologyError, match=r"a\.iface: cannot capture 'eth9'.*it has: lo, eth0"):
        await Capture.start(a.ns_fd, "a", "eth9", tmp_path / "bad.pcapng")
    with pytest.raises(pb.TopologyError, match="not an interface name"):
        PacketCapture.start(a.ns_fd, "an-interface-name-too-long", tmp_path / "bad.pcapng", node="a")
    with pytest.raises(OSError, match=r"open .*missing/dir"):
        PacketCapture.start(a.ns_fd, "eth0", tmp_path / "missing" / "dir" / "x.pcapng")


async def test_snaplen_truncates_and_keeps_the_original_length(lab: pb.Lab, tmp_path: Path) -> None:
    a, b = await two_devices(lab)
    path = tmp_path / "snap.pcapng"
    cap = PacketCapture.start(a.ns_fd, "eth0", path, snaplen=64)
    server = echo_server(b, 1)
    send(a, b, [b"x" * 1000])
    server.result(timeout=5)  # type: ignore[attr-defined]
    await wait_packets(cap, 2)
    cap.stop()
    big = [p for p in rdpcap(str(path)) if p.wirelen and p.wirelen > 1000]
    assert len(big) == 2 and all(len(bytes(p)) == 64 for p in big)
    # The Interface Description Block says the snap length and nanosecond timestamps.
    data = path.read_bytes()
    shb_len = struct.unpack_from("<I", data, 4)[0]
    idb = data[shb_len:]
    assert struct.unpack_from("<IIHHI", idb)[::2] == (1, LINKTYPE_ETHERNET, 64)
    assert b"\x09\x00\x01\x00\x09" in idb[: struct.unpack_from("<I", idb, 4)[0]]  # if_tsresol = 9


async def test_capture_paths_never_overwrite_and_the_capture_survives_a_link_flap(lab: pb.Lab,
                                                                                  tmp_path: Path) -> None:
    assert capture_path(tmp_path, "device", "a", "eth0").name == "device.a.eth0.pcapng"
    assert capture_path(tmp_path, "device", "a", "eth0").name == "device.a.eth0-2.pcapng"
    a, b = await two_devices(lab)
    cap = await Capture.start(a.ns_fd, "a", "eth0", capture_path(tmp_path, "device", "a", "eth0"))
    assert cap.path.name == "device.a.eth0-3.pcapng"
    await a.link_down("eth0")
    await a.link_up("eth0")
    server = echo_server(b, 1)
    send(a, b, [b"after-the-flap"])
    server.result(timeout=5)  # type: ignore[attr-defined]
    await wait_packets(cap, 2)
    await cap.stop()
    assert b"after-the-flap" in udp_payloads(cap.path)


async def test_device_capture_and_capture_all_write_into_the_outdir(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(outdir=pb.OutDir.exact(tmp_path))) as lab:
        home = await lab.add_router("home").nat(pb.Nat.HOME).build()
        dc = await lab.add_router("dc").build()
        a = await lab.add_device("a").iface("eth0", home).build()
        b = await lab.add_device("b").iface("eth0", dc).build()
        mine = await a.capture("eth0")
        everything = await lab.capture_all()
        wan_ip = str(home.uplink_ip)
        assert mine.path == tmp_path / "device.a.eth0.pcapng"
        assert {c.path.name for c in everything} >= {"device.b.eth0.pcapng", "router.home.ix.pcapng",
                                                     "router.home.lan.pcapng", "router.dc.lan.pcapng"}
        got = echo_server(b, 3)
        send(a, b, [b"one", b"two", b"three"])
        assert got.result(5) == [b"one", b"two", b"three"]  # type: ignore[attr-defined]
        await mine.stop()
        with pytest.raises(pb.TopologyError, match="no interface 'eth7'"):
            await a.capture("eth7")
    # The lab's close stopped the others; the NATed packets show the router's WAN address.
    wan = [p for p in rdpcap(str(tmp_path / "router.home.ix.pcapng")) if UDP in p and p[UDP].dport == PORT]
    assert [bytes(p[UDP].payload) for p in wan] == [b"one", b"two", b"three"]
    assert {p["IP"].src for p in wan} == {wan_ip}
    lan = [p for p in rdpcap(str(mine.path)) if UDP in p]
    assert [bytes(p[UDP].payload) for p in lan if p[UDP].dport == PORT] == [b"one", b"two", b"three"]


async def test_a_shaped_interface_shows_what_it_sends_after_the_wire(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(outdir=pb.OutDir.exact(tmp_path))) as lab:
        a, b = await two_devices(lab)
        assert (await a.ping(b.ip)).received == 1  # neighbours known before the wire loses half
        await a.set_link_condition("eth0", {"latency_ms": 20, "loss_pct": 50})
        capture = await a.capture("eth0")

        def bind() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((str(b.ip), PORT))
            return sock

        sock = b.run_sync(bind)

        def arrivals() -> set[bytes]:
            got = set()
            sock.settimeout(1.0)
            with sock:
                try:
                    while True:
                        got.add(sock.recv(100))
                except TimeoutError:
                    return got

        arrived = b.spawn_thread(arrivals)

        def burst() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for n in range(200):
                    s.sendto(b"n%03d" % n, (str(b.ip), PORT))
                    time.sleep(0.001)

        a.run_sync(burst)
        received = arrived.result(10)
        await capture.stop()
    out = {bytes(p[UDP].payload) for p in rdpcap(str(capture.path)) if UDP in p and p[UDP].dport == PORT}
    # The capture shows what left the interface: the wire's survivors, which are what arrived.
    assert out == received and 60 <= len(out) <= 140, len(out)
