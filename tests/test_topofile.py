"""Topology files: every key parses and is applied in a real lab; mistakes name file, line and key;
a file that fails (checking or building) leaves nothing behind."""

from __future__ import annotations

import fcntl
import re
import socket
import statistics
import struct
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import anyio
import pytest

import patchbay_core as pb
from patchbay_core import topofile
from patchbay_core.topofile import load_lab, open_topology, parse_topology, read_topology
from tests.helpers import netns_inodes_of_process
from tests.natkit import WHOAMI_PORT, udp_reflexive, whoami

TOPOS = Path(__file__).parent / "topos"
SIOCGIFMTU = 0x8921


# ---- parsing (no kernel) --------------------------------------------------------------------


def test_book_example_parses() -> None:
    topo = read_topology(TOPOS / "book.toml")
    assert [r.name for r in topo.routers] == ["dc", "lan-client"]
    assert topo.router("dc").nat is None and topo.router("lan-client").nat == "home"
    fetchers = [f"fetcher-{i}" for i in range(10)]
    assert [d.name for d in topo.devices] == ["server", "client", "sender", *fetchers]
    assert topo.device_groups == {"fetcher": fetchers} and topo.router_groups == {}
    assert [(i.name, i.gateway) for i in topo.device("client").ifaces] == [("eth0", "lan-client")]
    sender = topo.device("sender").ifaces[0]
    assert sender.impair == pb.LinkCondition.manual(pb.LinkLimits(latency_ms=100))
    assert all(d.ifaces[0].gateway == "dc" and d.group == "fetcher" for d in topo.devices[3:])
    assert list(topo.regions) == ["us-west", "us-east", "eu-central"]
    assert [(rl.a, rl.b, rl.link) for rl in topo.region_links] == [
        ("us-west", "us-east", pb.RegionLink.good(80)), ("us-west", "eu-central", pb.RegionLink.good(140))]


def test_every_key_parses() -> None:
    topo = read_topology(TOPOS / "full.toml")
    # Parents first: home is declared before its upstream isp.
    assert [r.name for r in topo.routers] == ["isp", "home", "office", "eu-dc", "us-dc", "lab-lan"]
    home, isp, office = topo.router("home"), topo.router("isp"), topo.router("office")
    assert home.upstream == "isp" and home.mtu == 1400
    assert home.nat == pb.NatConfig(mapping=pb.NatMapping.ENDPOINT_INDEPENDENT,
                                    filtering=pb.NatFiltering.ADDRESS_DEPENDENT, udp_timeout=5)
    assert home.downlink == pb.LinkCondition.manual(pb.LinkLimits(latency_ms=7))
    assert isp.preset == "isp-cgnat" and isp.ip_support is pb.IpSupport.V4_ONLY
    assert office.nat == "corporate" and office.pool is pb.Pool.PRIVATE and office.block_icmp_frag_needed
    assert office.firewall == pb.FirewallConfig(allow_tcp_ports=(80, 443), allow_udp_ports=(53, 3478))
    assert office.downstream_cidr == IPv4Network("10.77.0.0/24")
    assert [(f.proto, f.port, f.device, f.device_port) for f in office.port_forwards] == [("udp", 5000, "game", 9000)]
    assert topo.router("eu-dc").region == "eu" and topo.router("lab-lan").isolated
    assert [(rl.a, rl.b, rl.link.latency_ms) for rl in topo.region_links] == [("eu", "us", 30)]  # once, not twice
    laptop = topo.device("laptop")
    assert laptop.default_via == "wlan0" and laptop.mtu == 1300
    assert [(i.name, i.gateway, i.impair) for i in laptop.ifaces] == [
        ("eth0", "home", pb.LinkCondition("wifi")), ("wlan0", "office", None)]
    assert [d.ifaces[0].impair for d in topo.devices if d.group == "sensor"] == [
        pb.LinkCondition.manual(pb.LinkLimits(latency_ms=20))] * 2


def test_counted_routers_pair_by_index() -> None:
    topo = parse_topology("""
        [[router]]
        name = "cg"
        count = 2
        nat = "cgnat"
        [[router]]
        name = "home"
        count = 2
        upstream = "cg"
        nat = "home"
        port_forward = { proto = "tcp", port = 22, device = "peer" }
        [[router]]
        name = "dc"
        [device.peer]
        count = 2
        [device.peer.eth0]
        gateway = "home"
        [device.peer.eth1]
        gateway = "cg-0"
        [device.box.eth0]
        gateway = "home-1"
    """, source="pairs.toml")
    assert topo.router_groups == {"cg": ["cg-0", "cg-1"], "home": ["home-0", "home-1"]}
    assert [(r.name, r.upstream) for r in topo.routers] == [
        ("cg-0", None), ("cg-1", None), ("home-0", "cg-0"), ("home-1", "cg-1"), ("dc", None)]
    assert [f.device for r in topo.routers for f in r.port_forwards] == ["peer-0", "peer-1"]
    assert [[i.gateway for i in d.ifaces] for d in topo.devices] == [["home-0", "cg-0"], ["home-1", "cg-0"],
                                                                     ["home-1"]]


def test_a_parsed_document_keeps_lines_and_leaves_other_tables_alone() -> None:
    # What the sim runner does with an inline topology: its own tables stay its own.
    text = '[sim]\nname = "x"\n\n[[router]]\nname = "dc"\n\n[device.a.eth0]\ngateway = "nope"\n\n[[step]]\n'
    import tomllib

    doc = tomllib.loads(text)
    with pytest.raises(pb.TopologyError) as err:
        parse_topology(doc, source="sims/x.toml", text=text, other_keys=("sim", "step"))
    assert (err.value.file, err.value.line, err.value.key) == ("sims/x.toml", 8, "device.a.eth0.gateway")
    assert str(err.value).startswith("sims/x.toml:8: device.a.eth0.gateway: unknown router 'nope'")
    with pytest.raises(pb.TopologyError, match=r"^sim: unknown top-level key 'sim'"):
        parse_topology(doc)  # without other_keys, and without text or source: the key alone
    good = parse_topology({"router": [{"name": "dc"}], "device": {"a": {"eth0": {"gateway": "dc"}}}})
    assert [d.name for d in good.devices] == ["a"]


MISTAKES = [
    # (file text, line, key, what the message says)
    ('[[router]]\nname = "dc"\nnat = \n', 3, None, r"not valid TOML: Invalid value \(column 7\)"),
    ('[[router]]\nname = "dc"\n\n[device.client.eth0]\ngatway = "dc"\n', 5, "device.client.eth0.gatway",
     r"unknown key 'gatway' in interface \[device.client.eth0\] \(did you mean 'gateway'\?\); valid keys: gateway, "
     r"impair"),
    ('[[router]]\nname = "dc"\nnatt = "home"\n', 3, "router[0].natt", r"unknown key 'natt'.*did you mean 'nat'"),
    ('[[router]]\nname = "dc"\n[device.client.eth0]\ngateway = "dcc"\n', 4, "device.client.eth0.gateway",
     r"unknown router 'dcc' \(did you mean 'dc'\?\); routers in this file: dc"),
    ('[[router]]\nname = "home"\nupstream = "isp"\n', 3, "router[0].upstream", r"unknown router 'isp'"),
    ('[[router]]\nname = "dc"\n\n[[router]]\nname = "home"\nnat = "homey"\n', 6, "router[1].nat",
     r"unknown nat preset 'homey'; known: .*home"),
    ('[[router]]\nname = "r"\npreset = "palace"\n', 3, "router[0].preset", r"unknown router preset 'palace'; known:"),
    ('[[router]]\nname = "dc"\n[device.c.eth0]\ngateway = "dc"\nimpair = "wify"\n', 5, "device.c.eth0.impair",
     r"unknown link preset 'wify'; known: .*wifi"),
    ('[[router]]\nname = "dc"\nmtu = "big"\n', 3, "router[0].mtu", r"expected an integer \(mtu\), got a string"),
    ('[[router]]\nname = "dc"\nisolated = "yes"\n', 3, "router[0].isolated", r"expected true or false"),
    ('[[router]]\nname = 5\n', 2, "router[0].name", r"expected a string \(router name\), got an integer \(5\)"),
    ('[[router]]\nnat = "home"\n', 1, "router[0]", r"a \[\[router\]\] needs a name"),
    ('[[router]]\nname = "dc"\n[device.c]\ncount = 0\n[device.c.eth0]\ngateway = "dc"\n', 4, "device.c.count",
     r"count must be a positive integer .*got an integer \(0\)"),
    ('[[router]]\nname = "dc"\ncount = 2.5\n', 3, "router[0].count", r"count must be a positive integer"),
    ('[[router]]\nname = "dc"\ncount = "three"\n', 3, "router[0].count", r"got a string \('three'\)"),
    ('[[router]]\nname = "a"\nupstream = "b"\n[[router]]\nname = "b"\nupstream = "c"\n[[router]]\nname = "c"\n'
     'upstream = "a"\n', 3, "router[0].upstream", r"routers form an upstream cycle: a -> b -> c -> a"),
    ('[[router]]\nname = "a"\nupstream = "a"\n', 3, "router[0].upstream", r"upstream cycle: a -> a"),
    ('[[router]]\nname = "nat"\ncount = 2\n[device.peer]\ncount = 3\n[device.peer.eth0]\ngateway = "nat"\n', 7,
     "device.peer.eth0.gateway", r"device 'peer' has count = 3 but router 'nat' has count = 2.*counts must match"),
    ('[[router]]\nname = "nat"\ncount = 2\n[device.solo.eth0]\ngateway = "nat"\n', 5, "device.solo.eth0.gateway",
     r"router 'nat' has count = 2 \(nat-0..nat-1\); name one of them, or give device 'solo' count = 2"),
    ('[region.a]\nlatencies = { b = 10 }\n[region.b]\nlatencies = { a = 12 }\n', 4, "region.b.latencies.a",
     r"12 ms conflicts with region.a.latencies.b = 10 ms \(line 2\)"),
    ('[region.a]\nlatencies = { a = 10 }\n', 2, "region.a.latencies.a", r"lists itself"),
    ('[[router]]\nname = "r"\nregion = "mars"\n', 3, "router[0].region", r"unknown region 'mars'"),
    ('[[router]]\nname = "dc"\n[device.d]\ndefault_via = "wlan0"\n[device.d.eth0]\ngateway = "dc"\n', 4,
     "device.d.default_via", r"default_via names 'wlan0', which is not an interface of device 'd'"),
    ('[[router]]\nname = "x"\n[device.x.eth0]\ngateway = "x"\n', 3, "device.x",
     r"duplicate name 'x': the router at router\[0\] \(line 1\) has it already"),
    ('[[router]]\nname = "dc"\n[device.d]\n[device.d.eth0]\nimpair = "wifi"\n', 4, "device.d.eth0",
     r"interface 'eth0' of device 'd' needs gateway"),
    ('[[router]]\nname = "dc"\n[device.d]\ncount = 2\n', 3, "device.d", r"device 'd' has no interface"),
    ('[[router]]\nname = "dc"\n[device.d.wireless-lan-0001]\ngateway = "dc"\n', 3, "device.d.wireless-lan-0001",
     r"interface name 'wireless-lan-0001' has 17 bytes"),
    ('[devices.d.eth0]\ngateway = "dc"\n', 1, "devices", r"unknown top-level key 'devices' \(did you mean 'device'"),
    ('[[router]]\nname = "dc"\nnat = { mapping = "cone" }\n', 3, "router[0].nat.mapping",
     r"unknown NAT mapping 'cone'; expected one of: endpoint-independent, address-dependent"),
    ('[[router]]\nname = "dc"\nfirewall = { allow_udp_ports = [53, 70000] }\n', 3,
     "router[0].firewall.allow_udp_ports[1]", r"expected a port from 1 to 65535, got 70000"),
    ('[[router]]\nname = "dc"\ndownstream_cidr = "10.0.0.0/33"\n', 3, "router[0].downstream_cidr",
     r"'10.0.0.0/33' is not a network"),
    ('[[router]]\nname = "dc"\nport_forward = [{ proto = "udp", port = 1, device = "ghost" }]\n', 3,
     "router[0].port_forward[0].device", r"unknown device 'ghost'"),
    ('[[router]]\nname = "dc"\n[[router]]\nname = "b"\nport_forward = { proto = "udp", port = 1, device = "d" }\n'
     '[device.d.eth0]\ngateway = "dc"\n', 5, "router[1].port_forward",
     r"router 'b' forwards to device 'd', which has no interface on it \(its gateways: dc\)"),
    ('[[router]]\nname = "r"\nregion = "eu"\nisolated = true\n[region.eu]\n', 3, "router[0].region",
     r"a router in a region hangs off the region's router"),
    ('[[router]]\nname = "region-eu"\n[region.eu]\n', 1, "router[0]", r"taken by region 'eu'"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), MISTAKES, ids=[m[2] or "syntax" for m in MISTAKES])
def test_mistakes_name_the_file_line_and_key(tmp_path: Path, text: str, line: int, key: str | None,
                                             message: str) -> None:
    path = tmp_path / "topo.toml"
    path.write_text(text)
    with pytest.raises(pb.TopologyError) as err:
        read_topology(path)
    assert (err.value.file, err.value.line, err.value.key) == (str(path), line, key)
    prefix = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert str(err.value).startswith(prefix), str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_a_missing_file_is_a_topology_error(tmp_path: Path) -> None:
    with pytest.raises(pb.TopologyError, match=r"nope.toml: cannot read the topology file: No such file"):
        read_topology(tmp_path / "nope.toml")


def test_line_numbers_follow_toml_structure() -> None:
    text = '\n'.join([
        '# comment [[router]]',                              # 1
        'title = """',                                       # 2
        '[[router]]  # inside a string: no table',            # 3
        '"""',                                               # 4
        '[[router]]',                                        # 5
        'name = "a"',                                        # 6
        '[[router.port_forward]]',                           # 7
        'proto = "udp"',                                     # 8
        '[[router]]',                                        # 9
        'name = "b"',                                        # 10
        'port_forward = [',                                  # 11
        '  { proto = "tcp", port = 1 },',                    # 12
        '  { proto = "udp",',                                # 13
        '    port = 2 },',                                   # 14
        ']',                                                 # 15
        '[device."odd.name"]',                               # 16
        'eth0.gateway = "b"',                                # 17
        "[device . 'x' . eth0]",                             # 18
        'impair = { latency_ms = 5 }',                       # 19
    ])
    lines = topofile._KeyLines(text)
    assert lines.line_of(("router", 0)) == 5
    assert lines.line_of(("router", 0, "port_forward", 0, "proto")) == 8
    assert lines.line_of(("router", 1, "name")) == 10
    assert lines.line_of(("router", 1, "port_forward", 1)) == 13
    assert lines.line_of(("router", 1, "port_forward", 1, "port")) == 14
    assert lines.line_of(("router", 1, "port_forward", 1, "nope")) == 13  # the longest known prefix
    assert lines.line_of(("device", "odd.name", "eth0", "gateway")) == 17
    assert lines.line_of(("device", "x", "eth0", "impair", "latency_ms")) == 19
    assert lines.line_of(("title",)) == 2


# ---- building (real labs) -------------------------------------------------------------------

async def _rtt(a: pb.Device, b: pb.Device) -> float:
    result = await a.ping(b.ip, count=5, interval=0.02, timeout=1.0)
    assert result.rtts_ms, f"no echo from {b.name}"
    return statistics.median(result.rtts_ms)


def _mtu(dev: pb.Device, iface: str) -> int:
    def read() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # made inside the node's namespace
            raw = fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16si", iface.encode(), 0))
        return struct.unpack("16si", raw)[1]

    return dev.run_sync(read)


@pytest.mark.anyio
async def test_book_example_builds() -> None:
    lab, built = await open_topology(read_topology(TOPOS / "book.toml"))
    try:
        assert {r.name for r in lab.routers()} == {"dc", "lan-client"}
        assert len(lab.devices()) == 13 and lab.device("fetcher-9").iface("eth0").router.name == "dc"
        server, client, sender = lab.device("server"), lab.device("client"), lab.device("sender")
        # NAT: the server sees the client's datagrams come from its router's public address.
        async with whoami(server):
            seen = await udp_reflexive(client, 40000, [(str(server.ip), WHOAMI_PORT)])
        assert seen[0][0] == str(lab.router("lan-client").uplink_ip) != str(client.ip)
        # The impairment was applied after setup: 100 ms each way out of the sender.
        assert sender.link_stats("eth0") is not None and client.link_stats("eth0") is None
        assert 100 <= await _rtt(sender, server) < 110
        assert set(built.regions) == {"us-west", "us-east", "eu-central"}
    finally:
        await lab.close()


@pytest.mark.anyio
async def test_every_key_is_applied() -> None:
    lab, built = await open_topology(read_topology(TOPOS / "full.toml"))
    try:
        routers = {r.name: r for r in lab.routers()}
        states = {name: lab._routers[name] for name in routers}
        isp, home, office, lab_lan = routers["isp"], routers["home"], routers["office"], routers["lab-lan"]
        server, far, laptop, game = (lab.device(n) for n in ("server", "far", "laptop", "game"))
        # preset isp-cgnat: a CGNAT whose customers sit in 100.64.0.0/10; home chains behind it.
        assert states["isp"].config.nat == pb.NatConfig(mapping=pb.NatMapping.ENDPOINT_INDEPENDENT,
                                                        filtering=pb.NatFiltering.ENDPOINT_INDEPENDENT, hairpin=True,
                                                        downstream_pool=pb.Pool.CGNAT)
        assert states["isp"].config.ip_support is pb.IpSupport.V4_ONLY  # overrides the preset's dual stack
        assert home.uplink_ip in isp.downstream_cidr and isp.downstream_cidr.subnet_of(IPv4Network("100.64.0.0/10"))
        # Inline NAT table, MTU, downlink on home.
        assert states["home"].config.nat == built.topology.router("home").nat
        assert states["home"].config.mtu == 1400 and states["home"].downlink == pb.LinkLimits(latency_ms=7)
        # office: corporate NAT, inline firewall, private explicit pool, PMTU black hole, port forward.
        assert states["office"].config.nat.mapping is pb.NatMapping.ADDRESS_AND_PORT_DEPENDENT
        assert states["office"].config.firewall == pb.FirewallConfig(allow_tcp_ports=(80, 443),
                                                                     allow_udp_ports=(53, 3478))
        assert states["office"].config.block_icmp_frag_needed and states["office"].config.pool is pb.Pool.PRIVATE
        assert office.downstream_cidr == IPv4Network("10.77.0.0/24") and game.ip in office.downstream_cidr
        # default_via and the device MTU (below the home LAN's 1400); the impairment on eth0 only.
        assert laptop.default_iface().name == "wlan0" and laptop.ip == laptop.iface("wlan0").ip
        assert _mtu(laptop, "eth0") == 1300 and _mtu(laptop, "wlan0") == 1300
        assert laptop.link_stats("eth0") is not None and laptop.link_stats("wlan0") is None
        # The port forward, on real packets: the office's WAN udp/5000 reaches game:9000.
        received: list[bytes] = []

        async def receive(_: pb.Device) -> None:
            async with await anyio.create_udp_socket(local_host=str(game.ip), local_port=9000) as sock:
                received.append((await sock.receive())[0])

        async def send(_: pb.Device) -> None:
            async with await anyio.create_udp_socket(family=socket.AF_INET) as sock:
                for _attempt in range(20):
                    await sock.sendto(b"knock", str(office.uplink_ip), 5000)
                    await anyio.sleep(0.05)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(game.spawn, receive)
                await anyio.sleep(0.1)
                await server.spawn(send)
        assert received == [b"knock"]
        # Regions: eu and us are 30 ms apart each way.
        assert 60 <= await _rtt(server, far) < 66
        # isolated: no uplink; its two counted sensors reach each other (20 ms each way) and nothing else.
        assert lab_lan.uplink_ip is None
        s0, s1 = lab.device("sensor-0"), lab.device("sensor-1")
        assert 40 <= await _rtt(s0, s1) < 46
        assert (await s0.ping(server.ip, timeout=0.3)).received == 0
    finally:
        await lab.close()


@pytest.mark.anyio
async def test_every_peer_behind_its_own_nat() -> None:
    lab = await load_lab(TOPOS / "peers.toml")
    try:
        server = lab.device("server")
        peers = [lab.device(f"peer-{i}") for i in range(3)]
        async with whoami(server):
            seen = [(await udp_reflexive(p, 41000, [(str(server.ip), WHOAMI_PORT)]))[0][0] for p in peers]
        assert seen == [str(lab.router(f"nat-{i}").uplink_ip) for i in range(3)]
        assert len(set(seen)) == 3
        assert [p.iface("eth0").router.name for p in peers] == ["nat-0", "nat-1", "nat-2"]
    finally:
        await lab.close()


def _lab_threads(label: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith(f"-{label}")]


@pytest.mark.anyio
async def test_a_build_failing_halfway_leaves_nothing() -> None:
    before = netns_inodes_of_process()
    with pytest.raises(pb.TopologyError) as err:
        await load_lab(TOPOS / "halfway.toml", pb.LabOpts(label="halfway-leak"))
    path = TOPOS / "halfway.toml"
    assert (err.value.file, err.value.line, err.value.key) == (str(path), 10, "device.peer.eth0")
    assert str(err.value) == (f"{path}:10: device.peer.eth0: device 'peer-1': router 'tiny' has no address left "
                              "in 10.99.0.0/30")
    assert netns_inodes_of_process() == before  # the lab (tiny, peer-0, the IX) was closed
    assert _lab_threads("halfway-leak") == []


@pytest.mark.anyio
async def test_a_wrong_file_creates_no_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_lab(*_args: object) -> None:
        raise AssertionError("a lab was created for a file that does not check")

    monkeypatch.setattr(pb.Lab, "create", no_lab)
    with pytest.raises(pb.TopologyError, match=r"broken.toml:7: device.client.eth0.gateway: unknown router 'dcc'"):
        await load_lab(TOPOS / "broken.toml")


@pytest.mark.anyio
async def test_build_topology_into_a_lab_the_caller_owns(lab: pb.Lab) -> None:
    text = '[[router]]\nname = "dc"\n\n[device.a.eth0]\ngateway = "dc"\n\n[device.b.eth0]\ngateway = "dc"\n'
    built = await topofile.build_topology(lab, text, source="inline.toml")
    a, b = built.devices["a"], built.devices["b"]
    assert (await a.ping(b.ip)).received == 1
    assert built.routers["dc"] == lab.router("dc")
    # A failure in the caller's lab names the file and the key; the lab stays the caller's.
    with pytest.raises(pb.TopologyError, match=r"^again.toml:1: router\[0\]: router 'dc': duplicate name"):
        await topofile.build_topology(lab, parse_topology('[[router]]\nname = "dc"\n', source="again.toml"))
    assert a.ip == IPv4Address("198.18.1.2")


@pytest.mark.anyio
async def test_lab_load() -> None:
    lab = await pb.Lab.load(TOPOS / "small.toml")
    try:
        assert lab.label == "small"
        laptop, server = lab.device("laptop"), lab.device("server")
        assert (await laptop.ping(server.ip)).received == 1
    finally:
        await lab.close()
    with pytest.raises(pb.TopologyError, match=r"broken.toml:7: "):
        await pb.Lab.load(TOPOS / "broken.toml", pb.LabOpts(label="never"))


@pytest.mark.anyio
async def test_ipv6_routers_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "v6.toml"
    path.write_text(
        '[[router]]\nname = "dc"\n\n'
        '[[router]]\nname = "carrier"\npreset = "isp-v6"\n'
        'nat64_timeouts = { udp = 30, tcp_established = 600, icmp = 10 }\n\n'
        '[[router]]\nname = "npt"\nip_support = "dual-stack"\nnat_v6 = "nptv6"\n\n'
        '[device.server.eth0]\ngateway = "dc"\n\n'
        '[device.phone.eth0]\ngateway = "carrier"\n\n'
        '[device.laptop.eth0]\ngateway = "npt"\n'
    )
    lab = await load_lab(path)
    try:
        server, phone, laptop = lab.device("server"), lab.device("phone"), lab.device("laptop")
        assert phone.ip is None and phone.ip6 is not None and laptop.ip6 is not None
        assert lab.router("npt").npt_prefix6 is not None
        assert (await phone.ping(pb.nat64.embed_v4(server.ip))).received == 1  # type: ignore[arg-type]
        mappings = await lab.router("carrier").nat_mappings()
        assert [m.expires_s for m in mappings if m.proto == "nat64-icmp"] == [10]
    finally:
        await lab.close()
