"""The address plan and wiring, without a kernel."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from patchbay_core import TopologyError, netplan
from patchbay_core.netops import Addr, LinkSet, Macvlan, Route, VethPair


class FakeNs:
    fd = 42


def test_pools_follow_the_plan() -> None:
    assert netplan.public_pool_cidr(1) == IPv4Network("198.18.1.0/24")
    assert netplan.public_pool_cidr(255) == IPv4Network("198.18.255.0/24")
    assert netplan.public_pool_cidr(256) == IPv4Network("198.19.0.0/24")
    assert netplan.private_pool_cidr(1) == IPv4Network("10.0.1.0/24")
    assert netplan.private_pool_cidr(256) == IPv4Network("10.1.0.0/24")
    with pytest.raises(IndexError):
        netplan.public_pool_cidr(0)


def test_pool_counters_count_public_and_private_apart() -> None:
    counters = netplan.PoolCounters()
    assert counters.next_cidr("public") == IPv4Network("198.18.1.0/24")
    assert counters.next_cidr("private") == IPv4Network("10.0.1.0/24")
    assert counters.next_cidr("cgnat") == IPv4Network("100.64.1.0/24")
    assert counters.next_cidr("public") == IPv4Network("198.18.2.0/24")
    counters.release(IPv4Network("198.18.2.0/24"))
    assert counters.next_cidr("public") == IPv4Network("198.18.2.0/24")
    assert netplan.cgnat_pool_cidr(256) == IPv4Network("100.65.0.0/24")


def test_address_pool_hands_out_hosts_after_the_gateway_until_exhausted() -> None:
    pool = netplan.AddressPool(IPv4Network("10.9.0.0/29"))
    assert pool.gateway == IPv4Address("10.9.0.1")
    hosts = [pool.allocate() for _ in range(5)]
    assert hosts == [IPv4Address(f"10.9.0.{n}") for n in range(2, 7)]
    with pytest.raises(netplan.PoolExhausted):
        pool.allocate()  # .7 is the broadcast address
    pool.release(IPv4Address("10.9.0.3"))
    assert pool.allocate() == IPv4Address("10.9.0.3")


def test_ix_slots_start_at_ten() -> None:
    slots = netplan.ix_router_slots()
    assert slots.allocate() == IPv4Address("198.18.0.10")
    assert slots.allocate() == IPv4Address("198.18.0.11")


@pytest.mark.parametrize("name", ["", "a" * 16, "eth/0", "eth:0", "eth 0", "."])
def test_bad_interface_names_are_refused_with_node_and_field(name: str) -> None:
    with pytest.raises(TopologyError) as err:
        netplan.check_ifname(name, node="laptop", field="iface")
    assert str(err.value).startswith("laptop.iface: ")


def test_fifteen_byte_names_are_fine() -> None:
    netplan.check_ifname("a" * 15, node="x", field="iface")


def test_lan_plug_ops_create_the_macvlan_then_configure_it_inside() -> None:
    plug = netplan.LanPlug(iface="eth0", ifindex=16, lower_ifindex=20, ip=IPv4Address("10.0.1.2"),
                           subnet=IPv4Network("10.0.1.0/24"), gateway=IPv4Address("10.0.1.1"))
    (create,) = plug.ix_ops(FakeNs())
    assert isinstance(create, Macvlan) and create.lower == 20 and create.ns.fd == 42
    ops = plug.node_ops(default_route=True)
    assert ops == [
        LinkSet(16, "eth0", up=True),
        Addr(16, "eth0", IPv4Address("10.0.1.2"), 24),
        Route(None, IPv4Address("10.0.1.1"), oif=16, label="eth0", replace=True),
    ]
    assert not any(isinstance(op, Route) for op in plug.node_ops(default_route=False))


def test_ix_port_is_a_veth_enslaved_to_the_ix_bridge() -> None:
    port = netplan.IxPort(port_name="r1", port_ifindex=30, bridge_ifindex=16, iface="ix", ifindex=17,
                          ip=IPv4Address("198.18.0.10"))
    (veth,) = port.ix_ops(FakeNs())
    assert isinstance(veth, VethPair) and veth.master == 16 and veth.peer_name == "ix"
    assert port.node_ops(default_route=True)[-1].via == netplan.IX_GATEWAY


def test_operations_describe_themselves_for_error_messages() -> None:
    assert Addr(3, "eth0", IPv4Address("10.0.0.2"), 24).describe() == "add address 10.0.0.2/24 on eth0"
    assert Route(None, IPv4Address("10.0.0.1"), label="eth0").describe() == "add route default via 10.0.0.1 dev eth0"
