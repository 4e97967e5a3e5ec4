"""Networks that change under running code: route switches, replugs, link flaps, new
addresses, interfaces and nodes coming and going. Real packets before and after each change."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import anyio
import pytest

import patchbay_core as pb
from tests.helpers import lab_netns_inodes, serve_tcp_echo
from tests.natkit import WHOAMI_PORT, tcp_reflexive, udp_reflexive, whoami

pytestmark = pytest.mark.anyio


async def two_uplinks(lab: pb.Lab) -> tuple[pb.Router, pb.Router, pb.Device, pb.Device]:
    """A server in a datacenter and a device with one interface behind each of two home NATs."""
    dc = await lab.add_router("dc").build()
    wifi = await lab.add_router("wifi").nat(pb.Nat.HOME).build()
    cell = await lab.add_router("cell").nat(pb.Nat.HOME).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("wlan0", wifi).iface("cell0", cell).build()
    return wifi, cell, server, dev


async def udp_echo_ok(dev: pb.Device, target: tuple[str, int], timeout: float = 0.3) -> bool:
    """One datagram to a reflector and its echo back, within `timeout`."""

    async def run(_: pb.Device) -> bool:
        try:
            sock = await anyio.create_udp_socket(family=socket.AF_INET)
        except OSError:
            return False
        async with sock:
            with anyio.move_on_after(timeout):
                try:
                    await sock.sendto(b"ping", *target)
                    return (await sock.receive())[0] == b"ping"
                except OSError:  # no route while the link is down
                    await anyio.sleep(timeout)
            return False

    return await dev.spawn(run)


async def tcp_echo_ok(dev: pb.Device, target: tuple[str, int], timeout: float = 0.5) -> bool:
    async def run(_: pb.Device) -> bool:
        with anyio.move_on_after(timeout):
            try:
                stream = await anyio.connect_tcp(*target)
            except OSError:
                await anyio.sleep(timeout)
                return False
            async with stream:
                await stream.send(b"hello")
                return await stream.receive() == b"hello"
        return False

    return await dev.spawn(run)


async def test_reflexive_address_follows_the_default_route_back_and_forth(lab: pb.Lab) -> None:
    wifi, cell, server, dev = await two_uplinks(lab)
    assert dev.default_iface().name == "wlan0"
    target = [(str(server.ip), WHOAMI_PORT)]
    async with whoami(server), anyio.create_task_group() as tg:
        tg.start_soon(server.spawn, serve_tcp_echo, str(server.ip), 7000)
        await anyio.sleep(0.1)
        for uplink, router in [("cell0", cell), ("wlan0", wifi), ("cell0", cell)]:
            await dev.set_default_route(uplink)
            assert dev.default_iface().name == uplink
            [(udp_host, _)] = await udp_reflexive(dev, 41000, target)
            [(tcp_host, _)] = await tcp_reflexive(dev, 41001, target)
            assert udp_host == tcp_host == str(router.uplink_ip), (uplink, udp_host, tcp_host)
            # New TCP connections keep working after the switch.
            assert await tcp_echo_ok(dev, (str(server.ip), 7000))
        tg.cancel_scope.cancel()


async def test_replug_to_another_nat_and_to_a_custom_range(lab: pb.Lab) -> None:
    wifi, cell, server, dev = await two_uplinks(lab)
    custom = await lab.add_router("custom").nat(pb.Nat.HOME).downstream_cidr("10.99.0.0/24").build()
    reflector = await server.spawn_reflector((server.ip, 9000))
    target = [(str(server.ip), WHOAMI_PORT)]
    async with whoami(server):
        [(before, _)] = await udp_reflexive(dev, 42000, target)
        assert before == str(wifi.uplink_ip)
        old_ip = dev.iface("wlan0").ip
        new_ip = await dev.replug_iface("wlan0", cell)
        assert new_ip in cell.downstream_cidr and dev.iface("wlan0").ip == new_ip != old_ip
        assert dev.iface("wlan0").router == cell
        assert await udp_echo_ok(dev, (str(server.ip), 9000))
        [(after, _)] = await udp_reflexive(dev, 42001, target)
        assert after == str(cell.uplink_ip)
        new_ip = await dev.replug_iface("wlan0", custom)
        assert new_ip in IPv4Network("10.99.0.0/24")
        [(third, _)] = await udp_reflexive(dev, 42002, target)
        assert third == str(custom.uplink_ip)
    await reflector.close()
    with pytest.raises(pb.TopologyError, match="already plugged into router 'custom'"):
        await dev.replug_iface("wlan0", custom)
    with pytest.raises(pb.TopologyError, match="unknown router 'nope'"):
        await dev.replug_iface("wlan0", "nope")


async def test_link_down_stops_udp_and_tcp_and_link_up_restores_them_quickly(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", home).build()
    reflector = await server.spawn_reflector((server.ip, 9000))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.spawn, serve_tcp_echo, str(server.ip), 7000)
        await anyio.sleep(0.1)
        assert await udp_echo_ok(dev, (str(server.ip), 9000)) and await tcp_echo_ok(dev, (str(server.ip), 7000))
        await dev.link_down("eth0")
        assert not dev.iface("eth0").link_up
        assert not await udp_echo_ok(dev, (str(server.ip), 9000))
        assert not await tcp_echo_ok(dev, (str(server.ip), 7000))
        assert (await server.ping(dev.ip, timeout=0.3)).received == 0  # nothing reaches it either

        started = time.monotonic()
        await dev.link_up("eth0")
        while not await udp_echo_ok(dev, (str(server.ip), 9000), timeout=0.02):
            assert time.monotonic() - started < 1.0
        restored_ms = (time.monotonic() - started) * 1000
        assert restored_ms < 200, restored_ms
        assert await tcp_echo_ok(dev, (str(server.ip), 7000))
        tg.cancel_scope.cancel()
    await reflector.close()


async def test_renew_ip_changes_the_address_and_the_old_one_is_gone(lab: pb.Lab) -> None:
    r = await lab.add_router("r").build()
    dev = await lab.add_device("dev").iface("eth0", r).build()
    peer = await lab.add_device("peer").iface("eth0", r).build()
    old = dev.ip
    assert old is not None and (await peer.ping(old)).received == 1
    new = await dev.renew_ip("eth0")
    assert new != old and dev.ip == new and new in r.downstream_cidr
    assert (await peer.ping(new)).received == 1
    assert (await peer.ping(old, timeout=0.5)).received == 0
    assert (await dev.ping(peer.ip)).received == 1  # and it still reaches out (its source is the new one)

    async def local_addresses(_: pb.Device) -> set[str]:
        proc = await dev.spawn_command(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], stdout=-1)
        assert proc.stdout is not None
        text = b""
        async for chunk in proc.stdout:
            text += chunk
        await proc.wait()
        return {line.split()[3].split("/")[0] for line in text.decode().splitlines()}

    assert await dev.spawn(local_addresses) == {str(new)}


async def test_interfaces_come_and_go_at_runtime(lab: pb.Lab) -> None:
    a = await lab.add_router("a").build()
    b = await lab.add_router("b").build()
    server = await lab.add_device("server").iface("eth0", b).build()
    dev = await lab.add_device("dev").iface("eth0", a).build()
    iface = await dev.add_iface("eth1", b)
    assert iface.ip in b.downstream_cidr and iface.router == b
    assert (await server.ping(iface.ip)).received == 1
    with pytest.raises(pb.TopologyError, match="interface 'eth1' exists already"):
        await dev.add_iface("eth1", a)
    with pytest.raises(pb.TopologyError, match="15"):
        await dev.add_iface("a-very-long-interface-name", a)
    # Removing the default interface moves the default route to the one left.
    await dev.remove_iface("eth0")
    assert [i.name for i in dev.ifaces()] == ["eth1"] and dev.default_iface().name == "eth1"
    assert (await dev.ping(a.iface("ix").ip)).received == 1  # beyond its own LAN: via eth1
    with pytest.raises(pb.TopologyError, match="last interface"):
        await dev.remove_iface("eth1")
    with pytest.raises(pb.TopologyError, match="no interface 'eth0'"):
        await dev.remove_iface("eth0")

    async def names(_: pb.Device) -> list[str]:
        return sorted(name for _, name in socket.if_nameindex())

    assert await dev.spawn(names) == ["eth1", "lo"]


async def test_secondary_addresses_answer_and_survive_a_replug(lab: pb.Lab) -> None:
    a = await lab.add_router("a").build()
    b = await lab.add_router("b").build()
    dev = await lab.add_device("dev").iface("eth0", a).build()
    peer = await lab.add_device("peer").iface("eth0", a).build()
    extra = next(iter(a.downstream_cidr.hosts())) + 100
    await dev.add_ip("eth0", f"{extra}/24")
    assert (await peer.ping(extra)).received == 1
    with pytest.raises(pb.TopologyError, match="not an IPv4 or IPv6 address"):
        await dev.add_ip("eth0", "nonsense")
    await dev.add_ip("eth0", "10.8.0.2/24")  # a VPN-style address of its own range
    await dev.replug_iface("eth0", b)
    assert {str(x) for x in dev.iface("eth0").extra_ips} == {f"{extra}/24", "10.8.0.2/24"}

    async def bind(_: pb.Device) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("10.8.0.2", 0))  # the address is still on the interface
        return True

    assert await dev.spawn(bind)


async def test_an_isolated_router_keeps_its_devices_among_themselves_until_replugged(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    portal = await lab.add_router("portal").isolated().build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    victim = await lab.add_device("victim").iface("eth0", portal).build()
    neighbour = await lab.add_device("neighbour").iface("eth0", portal).build()
    reflector = await server.spawn_reflector((server.ip, 9000))
    assert (await victim.ping(neighbour.ip)).received == 1
    assert not await udp_echo_ok(victim, (str(server.ip), 9000))
    assert (await victim.ping(server.ip, timeout=0.3)).received == 0
    await victim.replug_iface("eth0", home)  # the user "authenticated"
    assert await udp_echo_ok(victim, (str(server.ip), 9000))
    await reflector.close()


async def test_devices_added_while_traffic_runs(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    first = await lab.add_device("first").iface("eth0", dc).build()
    reflector = await server.spawn_reflector((server.ip, 9000))
    stop = anyio.Event()
    lost: list[int] = []

    async def stream(_: pb.Device) -> int:
        sent = 0
        sock = await anyio.create_udp_socket(family=socket.AF_INET)
        async with sock:
            while not stop.is_set():
                await sock.sendto(b"x", str(server.ip), 9000)
                with anyio.move_on_after(0.5) as scope:
                    await sock.receive()
                if scope.cancelled_caught:
                    lost.append(sent)
                sent += 1
                await anyio.sleep(0.005)
        return sent

    async with anyio.create_task_group() as tg:
        tg.start_soon(first.spawn, stream)
        await anyio.sleep(0.2)
        extra = [await lab.add_device(f"late{i}").iface("eth0", dc).build() for i in range(5)]
        for dev in extra:
            assert await udp_echo_ok(dev, (str(server.ip), 9000))
        r2 = await lab.add_router("late-router").nat(pb.Nat.HOME).build()
        behind = await lab.add_device("behind").iface("eth0", r2).build()
        assert await udp_echo_ok(behind, (str(server.ip), 9000))
        await anyio.sleep(0.2)
        # The event lives on this loop; the stream checks it from the node's loop thread.
        stop.set()
    assert lost == []
    await reflector.close()


async def test_removing_nodes(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    isp = await lab.add_router("isp").build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).upstream(isp).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", home).build()
    held = lab_netns_inodes(lab)
    sleeper = await dev.spawn_command(["sh", "-c", "sleep 300 & sleep 300"])

    with pytest.raises(pb.TopologyError, match="device 'dev'"):
        await lab.remove_router(home)
    with pytest.raises(pb.TopologyError, match="router 'home'"):
        await lab.remove_router(isp)
    ns_inode, home_inode, isp_inode = (n._state.ns.inode for n in (dev, home, isp))  # type: ignore[union-attr]
    await lab.remove_device(dev)
    assert await sleeper.wait() != 0  # killed, and its background child with it
    assert not any(_in_netns(pid, ns_inode) for pid in _all_pids())
    with pytest.raises(pb.NodeGone):
        await dev.ping(server.ip)
    assert dev.ip is None and lab.devices() == [server]
    with pytest.raises(pb.TopologyError, match="no device named 'dev'"):
        lab.device("dev")
    await lab.remove_router(home)
    await lab.remove_router("isp")
    assert [r.name for r in lab.routers()] == ["dc"]
    gone = {ns_inode, home_inode, isp_inode}
    assert gone <= held and not gone & lab_netns_inodes(lab)  # this process holds none of them
    # The names and addresses are free again.
    isp2 = await lab.add_router("isp").build()
    dev2 = await lab.add_device("dev").iface("eth0", isp2).build()
    assert (await dev2.ping(server.ip)).received == 1


def _all_pids() -> list[int]:
    import os

    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _in_netns(pid: int, inode: int) -> bool:
    import os

    try:
        return os.readlink(f"/proc/{pid}/ns/net") == f"net:[{inode}]"
    except OSError:
        return False


async def test_every_change_is_an_event_and_in_state_json(tmp_path: object) -> None:
    async with pb.Lab(pb.LabOpts(label="events", outdir=pb.OutDir.exact(tmp_path))) as lab:  # type: ignore[arg-type]
        wifi, cell, _server, dev = await two_uplinks(lab)
        await dev.set_default_route("cell0")
        await dev.link_down("wlan0")
        await dev.link_up("wlan0")
        await dev.renew_ip("cell0")
        await dev.replug_iface("wlan0", cell)
        await dev.add_iface("eth9", wifi)
        await dev.add_ip("eth9", "10.8.0.2/24")
        await dev.remove_iface("eth9")
        lab.dns_entry("server.lab", "198.18.1.2")
        state = json.loads((tmp_path / "state.json").read_text())  # type: ignore[operator]
        [dev_state] = [d for d in state["devices"] if d["name"] == "dev"]
        assert dev_state["default_iface"] == "cell0"
        assert {i["name"]: i["router"] for i in dev_state["ifaces"]} == {"wlan0": "cell", "cell0": "cell"}
        assert {i["name"]: i["ip"] for i in dev_state["ifaces"]}["cell0"] == str(dev.iface("cell0").ip)
        await lab.remove_device(dev)
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]  # type: ignore[operator]
    for kind in ("default_route_changed", "link_down", "link_up", "ip_renewed", "iface_replugged", "iface_added",
                 "ip_added", "iface_removed", "dns_entry_added", "device_removed"):
        assert kind in kinds, kind
    state = json.loads((tmp_path / "state.json").read_text())  # type: ignore[operator]
    assert [d["name"] for d in state["devices"]] == ["server"]


# ---- the book's real-world recipes ----------------------------------------------------------


async def test_recipe_vpn_full_tunnel_split_tunnel_and_kill_switch(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    vpn_exit = await lab.add_router("vpn-exit").nat(pb.Nat.HOME).mtu(1420).build()
    relay = await lab.add_device("relay").iface("eth0", dc).build()
    corp = await lab.add_device("corp").iface("eth0", vpn_exit).build()
    client = await lab.add_device("client").iface("eth0", home).iface("wg0", vpn_exit).default_via("eth0").build()
    target = [(str(relay.ip), WHOAMI_PORT)]
    async with whoami(relay):
        # Split tunnel: internet via the physical link, the corporate server via the tunnel.
        [(seen, _)] = await udp_reflexive(client, 43000, target)
        assert seen == str(home.uplink_ip)
        assert (await client.ping(corp.ip)).received == 1
        # Full tunnel: everything exits at the VPN server.
        await client.set_default_route("wg0")
        [(seen, _)] = await udp_reflexive(client, 43001, target)
        assert seen == str(vpn_exit.uplink_ip)
        await client.set_default_route("eth0")
        # Kill switch: the physical link drops, the tunnel comes up on it, the link returns.
        await client.link_down("eth0")
        assert (await client.ping(relay.ip, timeout=0.3)).received == 0
        await client.replug_iface("eth0", vpn_exit)
        await client.link_up("eth0")
        [(seen, _)] = await udp_reflexive(client, 43002, target)
        assert seen == str(vpn_exit.uplink_ip)

    async def mtu(_: pb.Device) -> int:
        # SIOCGIFMTU asks the node's own namespace (/sys would show the host's interfaces).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            answer = fcntl.ioctl(s.fileno(), 0x8921, struct.pack("16si", b"eth0", 0))
        return int(struct.unpack("16si", answer)[1])

    assert await client.spawn(mtu) == 1420


async def test_recipe_wifi_to_cellular_handoff(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    wifi = await lab.add_router("wifi").nat(pb.Nat.HOME).build()
    cell = await lab.add_router("cell").nat(pb.Nat.CGNAT).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    phone = await lab.add_device("phone").iface("eth0", wifi, pb.LinkCondition.WIFI).build()
    target = (str(server.ip), 9000)
    reflector = await server.spawn_reflector(target)
    assert await udp_echo_ok(phone, target)
    await phone.link_down("eth0")
    await anyio.sleep(0.5)
    assert not await udp_echo_ok(phone, target)
    await phone.replug_iface("eth0", cell)
    await phone.set_link_condition("eth0", pb.LinkCondition.MOBILE_4G)
    await phone.link_up("eth0")
    # The application reconnects: within a second the echo works again, over the cellular link.
    started = time.monotonic()
    while not await udp_echo_ok(phone, target, timeout=0.2):
        assert time.monotonic() - started < 1.0
    assert phone.ip in cell.downstream_cidr and IPv4Address(str(phone.ip)) in IPv4Network("100.64.0.0/10")
    rtt = (await phone.ping(server.ip, count=5, interval=0.05)).rtts_ms
    assert min(rtt) >= 25 - 8  # the 4G condition shapes the new link
    await reflector.close()


async def test_recipe_intermittent_connectivity(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    dev = await lab.add_device("dev").iface("eth0", home).build()
    reflector = await server.spawn_reflector((server.ip, 9000))
    answered: list[float] = []  # when echoes came back
    done = anyio.Event()

    async def app(_: pb.Device) -> None:
        """A client that keeps one UDP socket and a keepalive every 20 ms."""
        sock = await anyio.create_udp_socket(family=socket.AF_INET)
        async with sock:
            while not done.is_set():
                with contextlib.suppress(OSError):  # the link is down: try again
                    await sock.sendto(b"keepalive", str(server.ip), 9000)
                with anyio.move_on_after(0.02):
                    await sock.receive()
                    answered.append(time.monotonic())
                    await anyio.sleep(0.02)

    flaps: list[tuple[float, float]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(dev.spawn, app)
        await anyio.sleep(0.3)
        for _ in range(3):
            await dev.link_down("eth0")
            down = time.monotonic()  # the link is down from here ...
            await anyio.sleep(0.2)
            coming_up = time.monotonic()  # ... to here
            await dev.link_up("eth0")
            up = time.monotonic()
            flaps.append((down, coming_up, up))
            await anyio.sleep(0.6)
        done.set()
    await reflector.close()
    for down, coming_up, up in flaps:
        # An echo the kernel took in just before the link went down may still be read a little
        # later by a loaded machine's app task: the window starts 50 ms in.
        assert not [t for t in answered if down + 0.05 < t < coming_up], "echoes during a flap"
        assert [t for t in answered if up < t < up + 0.3], "no recovery after a flap"


async def test_removing_a_shaped_device_frees_its_router(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    dev = await lab.add_device("dev").iface("eth0", dc, pb.LinkCondition.WIFI).build()
    await dev.set_link_condition("eth0", {"latency_ms": 5}, direction="down")
    await lab.remove_device(dev)
    assert lab.devices() == []
    await lab.remove_router(dc)  # nothing hangs on it any more
    assert lab.routers() == []


async def test_commands_racing_a_removal_never_outlive_it(lab: pb.Lab) -> None:
    dc = await lab.add_router("dc").build()
    dev = await lab.add_device("dev").iface("eth0", dc).build()
    inode = dev._state.ns.inode  # type: ignore[union-attr]
    queued = [lab._spawn_command(dev._state, ["sleep", "60"], {}) for _ in range(30)]
    await lab.remove_device(dev)
    for fut in queued:  # forked (then killed) or refused, never left running
        with contextlib.suppress(Exception):
            fut.result(10)
    assert not [pid for pid in _all_pids() if _in_netns(pid, inode)]
    with pytest.raises(pb.NodeGone):
        await dev.spawn_command(["true"])


async def test_the_first_command_spawned_by_node_code_pins_nothing(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(outdir=pb.OutDir.exact(tmp_path))) as lab:
        dc = await lab.add_router("dc").build()
        dev = await lab.add_device("dev").iface("eth0", dc).build()
        inode = dev._state.ns.inode  # type: ignore[union-attr]

        async def start(node: pb.Device) -> int:
            proc = await node.spawn_command(["true"])  # the lab's first command: its helpers start now
            return await proc.wait()

        assert await dev.spawn(start) == 0
        await lab.remove_device(dev)
        tasks = [t for t in os.listdir("/proc/self/task")
                 if _readlink(f"/proc/self/task/{t}/ns/net") == f"net:[{inode}]"]
        assert tasks == []  # no thread of the lab stayed in the removed device's namespace


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
