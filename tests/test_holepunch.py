"""Simultaneous UDP hole punching through a rendezvous server, for every pair of NAT types.

Expectation (RFC 4787 reasoning): a punch fails exactly when one side maps endpoint-
dependently (its mapping towards the peer is not the one the server saw) and the other side
either also does, or filters address-and-port-dependently (it only admits the exact address
it sent to, which the first side never uses). Address-dependent filtering is passable: the
peer's IP was contacted. Every other pair connects directly.

Derived per side, which also covers configurations the rule above leaves out: after both
sides opened their NAT towards the other's server-reflexive address, side X admits the
peer's probe (arriving at X's server-reflexive mapping, sent from the peer's mapping towards
X) when
  - both map endpoint-independently (the probe answers X's own flow), or
  - X filters endpoint-independently, unless X maps endpoint-dependently while the peer maps
    endpoint-independently (X already has its own flow to that very address through another
    mapping: the probe clashes with it), or
  - X filters address-dependently and maps endpoint-independently (it sent to that IP).
Once one side admits a probe, its answer travels back through that session and the other
side takes it as the reply to its own flow: the punch succeeds iff either side admits.
For the presets (and for every configuration without endpoint-independent filtering on an
endpoint-dependent mapping) this is exactly the rule above; an endpoint-dependent mapping
with endpoint-independent filtering is additionally reachable from another
endpoint-dependent peer.

Presets:            NONE  HOME  CORPORATE  FULL_CONE  CLOUD_NAT  CGNAT
    NONE             ok    ok      ok         ok         ok       ok
    HOME             ok    ok     FAIL        ok        FAIL      ok
    CORPORATE        ok   FAIL    FAIL        ok        FAIL      ok
    FULL_CONE        ok    ok      ok         ok         ok       ok
    CLOUD_NAT        ok   FAIL    FAIL        ok        FAIL      ok
    CGNAT            ok    ok      ok         ok         ok       ok
"""

from __future__ import annotations

import itertools

import anyio
import pytest

import patchbay_core as pb
from patchbay_core.plugins import presets
from tests.natkit import WHOAMI_PORT, punch, whoami

pytestmark = pytest.mark.anyio

M, F = pb.NatMapping, pb.NatFiltering


def expected_to_connect(a: pb.NatConfig | None, b: pb.NatConfig | None) -> bool:
    def eim(c: pb.NatConfig | None) -> bool:
        return c is None or c.mapping is M.ENDPOINT_INDEPENDENT

    def admits(x: pb.NatConfig | None, peer: pb.NatConfig | None) -> bool:
        if x is None:  # no NAT: a public address takes any packet
            return True
        if eim(x) and eim(peer):
            return True
        if x.filtering is F.ENDPOINT_INDEPENDENT:
            return not (not eim(x) and eim(peer))
        return x.filtering is F.ADDRESS_DEPENDENT and eim(x)

    return admits(a, b) or admits(b, a)


def test_the_derived_rule_is_the_issues_rule_wherever_that_rule_speaks() -> None:
    def issue_rule(a: pb.NatConfig | None, b: pb.NatConfig | None) -> bool:
        def dependent(c: pb.NatConfig | None) -> bool:
            return c is not None and c.mapping is not M.ENDPOINT_INDEPENDENT

        def strict(c: pb.NatConfig | None) -> bool:
            return c is not None and c.filtering is F.ADDRESS_AND_PORT_DEPENDENT

        return not ((dependent(a) and (dependent(b) or strict(b))) or (dependent(b) and (dependent(a) or strict(a))))

    configs = [None] + [pb.NatConfig(mapping=m, filtering=f) for m in M for f in F]
    for a, b in itertools.product(configs, repeat=2):
        dependent_eif = [c for c in (a, b) if c is not None and c.mapping is not M.ENDPOINT_INDEPENDENT
                         and c.filtering is F.ENDPOINT_INDEPENDENT]
        if not dependent_eif:
            assert expected_to_connect(a, b) == issue_rule(a, b), (a, b)
    table = presets("nat")
    for x, y in itertools.product([None, *table.values()], repeat=2):
        assert expected_to_connect(x, y) == issue_rule(x, y)


async def punch_matrix(lab: pb.Lab, configs: dict[str, pb.NatConfig | None]) -> dict[tuple[str, str], bool]:
    dc = await lab.add_router("dc").build()
    server = await lab.add_device("rendezvous").iface("eth0", dc).build()
    sides: dict[tuple[str, str], pb.Device] = {}
    for name, config in configs.items():
        for side in ("a", "b"):
            builder = lab.add_router(f"{side}-{name}")
            if config is not None:
                builder = builder.nat(config)
            router = await builder.build()
            sides[(side, name)] = await lab.add_device(f"peer-{side}-{name}").iface("eth0", router).build()
    results: dict[tuple[str, str], bool] = {}
    pairs = list(itertools.combinations_with_replacement(configs, 2))

    async def one(n: int, x: str, y: str) -> None:
        results[(x, y)] = await punch(sides[("a", x)], sides[("b", y)], 30000 + n, (str(server.ip), WHOAMI_PORT))

    async with whoami(server), anyio.create_task_group() as tg:
        for n, (x, y) in enumerate(pairs):
            tg.start_soon(one, n, x, y)
    return results


async def test_presets_punch_as_the_table_says(lab: pb.Lab) -> None:
    table = presets("nat")
    configs: dict[str, pb.NatConfig | None] = {"none": None}
    configs |= {n.value: table[n.value] for n in pb.Nat if n is not pb.Nat.NONE}  # type: ignore[misc]
    results = await punch_matrix(lab, configs)
    wrong = {pair: got for pair, got in results.items()
             if got != expected_to_connect(configs[pair[0]], configs[pair[1]])}
    assert wrong == {}, f"pairs against the expectation (True = connected): {wrong}"
    assert results[("home", "corporate")] is False and results[("home", "home")] is True


async def test_every_mapping_and_filtering_combination_punches_as_the_rule_says(lab: pb.Lab) -> None:
    short = {M.ENDPOINT_INDEPENDENT: "eim", M.ADDRESS_DEPENDENT: "adm", M.ADDRESS_AND_PORT_DEPENDENT: "apdm",
             F.ENDPOINT_INDEPENDENT: "eif", F.ADDRESS_DEPENDENT: "adf", F.ADDRESS_AND_PORT_DEPENDENT: "apdf"}
    configs: dict[str, pb.NatConfig | None] = {
        f"{short[m]}-{short[f]}": pb.NatConfig(mapping=m, filtering=f)
        for m in (M.ENDPOINT_INDEPENDENT, M.ADDRESS_DEPENDENT, M.ADDRESS_AND_PORT_DEPENDENT)
        for f in F
    }
    results = await punch_matrix(lab, configs)
    wrong = {pair: got for pair, got in results.items()
             if got != expected_to_connect(configs[pair[0]], configs[pair[1]])}
    assert wrong == {}, f"pairs against the expectation (True = connected): {wrong}"
