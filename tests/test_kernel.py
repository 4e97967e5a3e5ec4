"""The C core through its thin Python layer: batches, acks, extended acks, nft, sysctls."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from patchbay_core import NetlinkError, NftError
from patchbay_core.kernel.namespace import NetNs
from patchbay_core.netops import Addr, Bridge, LinkSet, Macvlan, Route, VethPair
from tests.helpers import in_throwaway_home


def test_a_batch_makes_links_across_namespaces_and_configures_them() -> None:
    def work(home: NetNs) -> tuple[list[str], list[str], list[str]]:
        peer = NetNs.create("peer", {"net.ipv4.ip_forward": "1"})
        try:
            home.apply([LinkSet(1, "lo", up=True), Bridge("br0", 20),
                        VethPair("v0", 21, "eth0", 16, peer, master=20),
                        VethPair("low", 22, "x", 17, peer), Macvlan("mv0", 18, 22, peer)])
            peer.apply([LinkSet(16, "eth0", up=True), Addr(16, "eth0", IPv4Address("10.1.0.2"), 24),
                        Route(IPv4Network("10.2.0.0/24"), IPv4Address("10.1.0.1"))])
            assert peer.read_sysctl("net.ipv4.ip_forward") == "1"
            assert home.read_sysctl("net.ipv4.ip_forward") == "0"
            links = sorted(f"{link.name}@{link.master}" for link in home.links())
            routes = [r.dst for r in peer.routes() if r.table == 254 and r.family == 2]
            return links, sorted(link.name for link in peer.links()), routes
        finally:
            peer.close()

    home_links, peer_links, routes = in_throwaway_home(work)
    assert home_links == ["br0@0", "lo@0", "low@0", "v0@20"]
    assert peer_links == ["eth0", "lo", "mv0", "x"]
    assert sorted(routes) == ["10.1.0.0/24", "10.2.0.0/24"]


def test_a_failed_operation_is_named_with_the_kernel_text() -> None:
    def work(home: NetNs) -> NetlinkError:
        home.apply([LinkSet(1, "lo", up=True), Addr(1, "lo", IPv4Address("10.9.9.9"), 32)])
        with pytest.raises(NetlinkError) as err:
            # The second message fails: the error names it, not its neighbours (the kernel
            # still processes every message sent with it).
            home.apply([Addr(1, "lo", IPv4Address("10.9.9.10"), 32), Addr(1, "lo", IPv4Address("10.9.9.9"), 32),
                        Addr(1, "lo", IPv4Address("10.9.9.11"), 32)])
        assert {"10.9.9.10", "10.9.9.11"} <= {str(a.ip) for a in home.addrs()}
        return err.value

    error = in_throwaway_home(work)
    assert error.errno == 17 and error.node == "home"
    assert str(error) == "home: add address 10.9.9.9/32 on lo: File exists (EEXIST): ipv4: Address already assigned"


def test_nft_runs_transactions_reports_its_own_errors_and_lists_json() -> None:
    def work(home: NetNs) -> tuple[str, str]:
        home.nft("table ip t {\n chain c {\n  type filter hook forward priority 0;\n  counter\n }\n}\n")
        listing = home.nft("list ruleset", json=True)
        with pytest.raises(NftError) as err:
            home.nft("add rule ip t nope counter")
        # A failed transaction changes nothing.
        with pytest.raises(NftError):
            home.nft("add chain ip t d\nadd rule ip t nowhere drop")
        assert "chain d" not in home.nft("list ruleset")
        return listing, str(err.value)

    listing, message = in_throwaway_home(work)
    assert '"chain": {"family": "ip", "table": "t", "name": "c"' in listing and '"counter"' in listing
    assert message.startswith("home: nft transaction starting 'add rule ip t nope counter'")
    assert "Could not process rule: No such file or directory" in message and "^^^^" in message


def test_sysctl_errors_name_the_key() -> None:
    with pytest.raises(NetlinkError, match=r"write sysctl.*net/ipv4/nonexistent=1"):
        in_throwaway_home(lambda home: home.write_sysctls({"net.ipv4.nonexistent": "1"}))
