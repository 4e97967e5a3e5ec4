"""NAT models from third-party plugins, and what happens when a plugin gets it wrong."""

from __future__ import annotations

import types
from collections.abc import Iterator

import pytest

import patchbay_core as pb
from patchbay_core.plugins import plugin_manager
from tests.helpers import lab_netns_inodes
from tests.natkit import WHOAMI_PORT, udp_reflexive, whoami

pytestmark = pytest.mark.anyio

BROKEN = pb.NatConfig(udp_timeout=4242)  # the marker the broken plugin reacts to
RAISING = pb.NatConfig(udp_timeout=4243)  # ... and the one it fails on while writing rules
MASQUERADE = pb.NatConfig(udp_timeout=4244)  # its own table, nothing more for a shared LAN
SHARED_BROKEN = pb.NatConfig(udp_timeout=4245)  # its own table, and shared-LAN text nft refuses


def _plugin() -> types.ModuleType:
    module = types.ModuleType("tiny_nat_plugin")

    @pb.hookimpl
    def patchbay_nat_presets() -> dict[str, pb.NatConfig]:
        # A "sticky" NAT: endpoint-independent mapping, address-dependent filtering.
        return {"sticky": pb.NatConfig(mapping=pb.NatMapping.ENDPOINT_INDEPENDENT,
                                       filtering=pb.NatFiltering.ADDRESS_DEPENDENT, udp_stream_timeout=90)}

    @pb.hookimpl(tryfirst=True)
    def patchbay_nat_rules(config: pb.NatConfig, ctx: pb.RuleContext) -> str | None:
        if config == RAISING:
            raise RuntimeError("tiny_nat_plugin cannot model this NAT")
        if config == BROKEN:
            return f"table ip {ctx.table} {{\n  chain postrouting {{ type nat hook postrouting priority srcnat; " \
                   f"oifname {ctx.wan_iface} masquerade to nowhere; }}\n}}\n"
        if config in (MASQUERADE, SHARED_BROKEN):
            return f"table ip {ctx.table} {{\n  chain postrouting {{ type nat hook postrouting priority srcnat; " \
                   f'oifname "{ctx.wan_iface}" masquerade; }}\n}}\n'
        return None  # everything else: let the built-in plugin write the rules

    @pb.hookimpl(tryfirst=True)
    def patchbay_nat_shared_rules(config: pb.NatConfig, ctx: pb.RuleContext) -> str | None:
        assert ctx.shared_lan
        if config == SHARED_BROKEN:
            return f"table ip {ctx.table} {{\n  chain postrouting {{ oifname {ctx.wan_iface} snat to nowhere; }}\n}}\n"
        return None

    module.patchbay_nat_presets = patchbay_nat_presets  # type: ignore[attr-defined]
    module.patchbay_nat_rules = patchbay_nat_rules  # type: ignore[attr-defined]
    module.patchbay_nat_shared_rules = patchbay_nat_shared_rules  # type: ignore[attr-defined]
    return module


@pytest.fixture
def tiny_plugin() -> Iterator[None]:
    pm = plugin_manager()
    pm.register(_plugin(), name="tiny_nat_plugin")
    try:
        yield
    finally:
        pm.unregister(name="tiny_nat_plugin")


async def test_a_plugin_preset_is_used_by_name(lab: pb.Lab, tiny_plugin: None) -> None:
    dc = await lab.add_router("dc").build()
    srv = await lab.add_device("srv").iface("eth0", dc).build()
    nat = await lab.add_router("nat").nat("sticky").build()
    dev = await lab.add_device("dev").iface("eth0", nat).build()
    async with whoami(srv):
        (seen,) = await udp_reflexive(dev, 5000, [(str(srv.ip), WHOAMI_PORT)])
    assert seen == (str(nat.uplink_ip), 5000)
    mappings = await nat.nat_mappings()
    assert [m for m in mappings if m.proto == "udp" and m.remote is None] == []
    # Its timeout is the plugin's: the mapping lives 90 s.
    owners = [m for m in mappings if m.proto == "udp"]
    assert owners and all(m.expires_s is not None and m.expires_s <= 90 for m in owners)


async def test_unknown_presets_list_the_known_ones_including_plugins(lab: pb.Lab, tiny_plugin: None) -> None:
    with pytest.raises(pb.TopologyError) as err:
        await lab.add_router("r").nat("hom").build()
    message = str(err.value)
    assert message.startswith("r.nat: unknown nat preset 'hom'; known: ")
    assert "home" in message and "sticky" in message and "cgnat" in message
    with pytest.raises(pb.TopologyError, match=r"r\.firewall: unknown firewall preset 'open'"):
        await lab.add_router("r").firewall("open").build()


async def test_rule_text_nft_rejects_names_the_plugin_and_leaves_nothing(lab: pb.Lab, tiny_plugin: None) -> None:
    await lab.add_router("dc").build()
    before = lab_netns_inodes(lab)
    with pytest.raises(pb.NftError) as err:
        await lab.add_router("bad").nat(BROKEN).build()
    message = str(err.value)
    assert "pb_nat rules written by tiny_nat_plugin" in message
    assert "masquerade to nowhere" in message and "Error:" in message  # nft's own words
    assert lab_netns_inodes(lab) == before
    assert [r.name for r in lab.routers()] == ["dc"]
    good = await lab.add_router("bad").nat(pb.Nat.HOME).build()
    assert good.uplink_ip is not None


async def test_a_plugins_own_nat_on_a_shared_lan(lab: pb.Lab, tiny_plugin: None) -> None:
    """A second host asks the plugin that wrote the NAT table (not the built-in one) for what
    a shared LAN needs; text nft refuses fails that host's build, names the plugin, leaves
    nothing, and the LAN goes on working."""
    dc = await lab.add_router("dc").build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    plain = await lab.add_router("plain").nat(MASQUERADE).build()
    await lab.add_device("p1").iface("eth0", plain).build()
    p2 = await lab.add_device("p2").iface("eth0", plain).build()  # nothing to add: fine
    broken = await lab.add_router("broken").nat(SHARED_BROKEN).build()
    b1 = await lab.add_device("b1").iface("eth0", broken).build()
    before = lab_netns_inodes(lab)
    with pytest.raises(pb.NftError) as err:
        await lab.add_device("b2").iface("eth0", broken).build()
    assert "pb_nat rules written by tiny_nat_plugin" in str(err.value) and "snat to nowhere" in str(err.value)
    assert lab_netns_inodes(lab) == before and "b2" not in [d.name for d in lab.devices()]
    async with whoami(server):
        for dev, router in ((p2, plain), (b1, broken)):
            assert await udp_reflexive(dev, 41000, [(str(server.ip), WHOAMI_PORT)]) == [
                (str(router.uplink_ip), 41000)]


async def test_a_plugin_failing_to_write_rules_fails_the_build_and_leaves_nothing(lab: pb.Lab,
                                                                                  tiny_plugin: None) -> None:
    await lab.add_router("dc").build()
    before = lab_netns_inodes(lab)
    with pytest.raises(RuntimeError, match="cannot model this NAT"):
        await lab.add_router("bad").nat(RAISING).build()
    assert lab_netns_inodes(lab) == before
    assert [r.name for r in lab.routers()] == ["dc"]
    assert (await lab.add_router("bad").nat(pb.Nat.HOME).build()).uplink_ip is not None
