"""Names inside a lab: every resolution path of a node sees the lab's entries, the host never does."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import anyio
import pytest

import patchbay_core as pb
from tests.natkit import wait_for

pytestmark = pytest.mark.anyio


async def command_output(node: pb.Device, argv: list[str]) -> str:
    proc = await node.spawn_command(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = b""
    async for chunk in proc.stdout:
        out += chunk
    await proc.wait()
    return out.decode()


def getaddrinfo_ips(name: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(name, None)}
    except socket.gaierror:
        return set()


async def test_every_resolution_path_sees_lab_and_device_entries(lab: pb.Lab) -> None:
    host_hosts = Path("/etc/hosts").read_bytes()
    r = await lab.add_router("r").build()
    dev = await lab.add_device("dev").iface("eth0", r).build()
    other = await lab.add_device("other").iface("eth0", r).build()
    lab.dns_entry("server.lab", "198.18.1.50")
    lab.dns_entry("server.lab", "2001:db8::50")  # v4 and v6 for one name
    lab.dns_entry("shared.lab", "198.18.1.60")
    dev.dns_entry("shared.lab", "10.1.2.3")  # the device's own entry shadows the lab's
    dev.dns_entry("mine.lab", "fd00::7")

    # Commands spawned in the device.
    # (getent ahosts asks with AI_ADDRCONFIG: a device without IPv6 addresses gets no v6 answers)
    assert command_output_lines(await command_output(dev, ["getent", "ahostsv4", "server.lab"])) == ["198.18.1.50"]
    assert command_output_lines(await command_output(dev, ["getent", "hosts", "mine.lab"])) == ["fd00::7"]
    assert command_output_lines(await command_output(dev, ["getent", "hosts", "shared.lab"])) == ["10.1.2.3"]
    hosts_file = await command_output(dev, ["cat", "/etc/hosts"])
    assert "10.1.2.3\tshared.lab" in hosts_file and "198.18.1.60" not in hosts_file
    # Python inside the device: run_sync, spawn (socket and anyio), spawn_thread.
    assert dev.run_sync(getaddrinfo_ips, "shared.lab") == {"10.1.2.3"}
    assert dev.run_sync(getaddrinfo_ips, "mine.lab") == {"fd00::7"}

    async def anyio_lookup(_: pb.Device, name: str) -> set[str]:
        return {str(info[4][0]) for info in await anyio.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}

    assert await dev.spawn(anyio_lookup, "server.lab") == {"198.18.1.50", "2001:db8::50"}
    assert dev.spawn_thread(getaddrinfo_ips, "shared.lab").result(5) == {"10.1.2.3"}
    # Another device sees the lab-wide entries only.
    assert other.run_sync(getaddrinfo_ips, "shared.lab") == {"198.18.1.60"}
    assert other.run_sync(getaddrinfo_ips, "mine.lab") == set()
    # Entries added later are seen at once, by running threads and new commands alike.
    lab.dns_entry("late.lab", "198.18.1.70")
    other.dns_entry("later.lab", "198.18.1.71")
    assert dev.run_sync(getaddrinfo_ips, "late.lab") == {"198.18.1.70"}
    assert command_output_lines(await command_output(other, ["getent", "hosts", "later.lab"])) == ["198.18.1.71"]
    # localhost still works; the host's own file never changed and never saw the lab's names.
    assert dev.run_sync(getaddrinfo_ips, "localhost") >= {"127.0.0.1"}
    assert Path("/etc/hosts").read_bytes() == host_hosts
    assert getaddrinfo_ips("server.lab") == set()


def command_output_lines(text: str) -> list[str]:
    return sorted({line.split()[0] for line in text.splitlines() if line.strip()})


async def test_entries_made_before_a_device_exists_and_routers_see_them(lab: pb.Lab) -> None:
    lab.dns_entry("early.lab", "198.18.9.9")
    r = await lab.add_router("r").build()
    dev = await lab.add_device("dev").iface("eth0", r).build()
    assert dev.run_sync(getaddrinfo_ips, "early.lab") == {"198.18.9.9"}
    assert r.run_sync(getaddrinfo_ips, "early.lab") == {"198.18.9.9"}


async def test_bad_entries_are_refused(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    dev = await lab.add_device("dev").iface("eth0", r).build()
    with pytest.raises(pb.TopologyError, match="not a host name"):
        lab.dns_entry("bad name", "1.2.3.4")
    with pytest.raises(pb.TopologyError, match="not an IPv4 or IPv6 address"):
        lab.dns_entry("ok.lab", "999.1.1.1")
    with pytest.raises(pb.TopologyError, match=r"dev\.dns_entry"):
        dev.dns_entry("ok.lab", "nope")


def dns_answer(query: bytes, ip: IPv4Address) -> bytes:
    """A minimal DNS response: the question back, one A record for it."""
    ident, _flags, qdcount = struct.unpack_from("!HHH", query)
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    qtype = struct.unpack_from("!H", query, end + 1)[0]
    answers = b""
    if qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ip.packed
    header = struct.pack("!HHHHHH", ident, 0x8180, qdcount, 1 if answers else 0, 0, 0)
    return header + question + answers


async def test_the_nameserver_is_used_by_resolvers_in_nodes(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    dns = await lab.add_device("dns").iface("eth0", r).build()
    client = await lab.add_device("client").iface("eth0", r).build()
    # Before a nameserver is set, unknown names fail at once inside the lab.
    resolv_conf = await command_output(client, ["cat", "/etc/resolv.conf"])
    assert not [line for line in resolv_conf.splitlines() if line.startswith("nameserver")]
    assert client.run_sync(getaddrinfo_ips, "unknown.example") == set()
    ready = threading.Event()
    asked: list[bytes] = []

    async def serve(_: pb.Device) -> None:
        sock = await anyio.create_udp_socket(local_host=str(dns.ip), local_port=53)
        async with sock:
            ready.set()
            while True:
                query, (host, port) = await sock.receive()
                asked.append(query)
                await sock.sendto(dns_answer(query, IPv4Address("198.18.77.7")), host, port)

    async with anyio.create_task_group() as tg:
        tg.start_soon(dns.spawn, serve)
        await wait_for(ready)
        lab.set_nameserver(dns.ip)  # type: ignore[arg-type]
        assert f"nameserver {dns.ip}" in await command_output(client, ["cat", "/etc/resolv.conf"])
        out = await command_output(client, ["getent", "ahostsv4", "anything.example"])
        assert "198.18.77.7" in out
        ips = client.run_sync(lambda: {info[4][0] for info in socket.getaddrinfo("other.example", 80,
                                                                              socket.AF_INET)})
        assert ips == {"198.18.77.7"}
        assert asked, "the lab's DNS server was never asked"
        tg.cancel_scope.cancel()
    with pytest.raises(pb.TopologyError):
        lab.set_nameserver("not-an-ip")
    assert ip_address(str(dns.ip))
