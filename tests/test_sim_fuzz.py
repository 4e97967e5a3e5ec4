"""Fuzzing the sim loader: whatever TOML-ish text it is given, it either loads sims or raises a
SimError (wrapping a TopologyError when the topology part is wrong), never anything else."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchbay_core as pb
from patchbay_core.sim import load_sim_text
from tests.sims.helpers import BOOK

WORDS = ["run", "spawn", "wait-for", "wait", "set-link-condition", "set-impair", "link-down", "link-up",
         "set-default-route", "gen-certs", "gen-file", "assert", "text", "ndjson", "json", "stdout", "stderr",
         "dc", "home", "a", "b", "eth0", "srv", "srv.port", "a.b", ".x", "wifi", "lan", "none", "500ms", "30s",
         "2m", "3h", "true", "false", "${matrix.x}", "${matrix.topo}", "${group.device}", "${srv.port}",
         "${binary.tool}", "$NETSIM_IP_a", "$NETSIM_IP_zz", "${", "${}", "${${group.d}.x}", "srv.port >= 3",
         "srv.port matches [0-9]+", "x == y", "(", "[", "*", "", "home", "corporate", "tool", "path", "t", "g"]
KEYS = ["action", "kind", "id", "use", "vars", "device", "env", "requires", "when", "cmd", "args", "parser",
        "captures", "results", "ready_after", "timeout", "duration", "interface", "condition", "impair", "to",
        "cn", "san", "content", "check", "checks", "pipe", "regex", "match", "pick", "name", "topology", "mode",
        "path", "url", "repo", "example", "bin", "features", "all-features", "count", "gateway", "nat",
        "upstream", "region", "latencies", "latency_ms", "file", "params", "step", "down_bytes", "duration",
        "latency_ms", "eth0", "topo", "x", "default_via", "mtu"]

scalars = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.integers(-5, 70000), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=20)
step = st.dictionaries(st.sampled_from(KEYS), values, max_size=7)
router = st.fixed_dictionaries({"name": st.sampled_from(["dc", "home", "a", "r"])},
                               optional={"nat": values, "count": values, "upstream": values, "region": values})
iface = st.fixed_dictionaries({"gateway": st.sampled_from(["dc", "home", "x", 3])}, optional={"impair": values})
device = st.dictionaries(st.sampled_from(["eth0", "eth1", "count", "default_via"]), st.one_of(iface, values),
                         max_size=3)
documents = st.fixed_dictionaries({}, optional={
    "sim": st.dictionaries(st.sampled_from(["name", "topology", "x"]), values, max_size=3),
    "matrix": st.dictionaries(st.sampled_from(["topo", "x", "params"]), values, max_size=3),
    "step": st.lists(step, max_size=5),
    "router": st.lists(router, max_size=3),
    "device": st.dictionaries(st.sampled_from(["a", "b", "srv"]), device, max_size=3),
    "region": st.dictionaries(st.sampled_from(["eu", "us"]), values, max_size=2),
    "binary": st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=4), max_size=2),
    "step-template": st.lists(step, max_size=2),
    "step-group": st.lists(st.dictionaries(st.sampled_from(["name", "step"]), st.one_of(values, st.lists(step)),
                                           max_size=2), max_size=2),
    "prepare": values,
    "extends": st.lists(st.fixed_dictionaries({"file": st.sampled_from(["none.toml", "", "../x.toml"])}),
                        max_size=1),
})

# Plausible steps on a valid topology: most keys right, values often right, to get deep into
# templates, groups, counted devices and the reference checks.
ACTIONS = ["run", "spawn", "wait-for", "wait", "set-link-condition", "link-down", "link-up", "set-default-route",
           "gen-certs", "gen-file", "assert"]
STEP_WORDS = [w for w in WORDS if "matrix" not in w]
plausible = st.one_of(st.sampled_from(STEP_WORDS), st.lists(st.sampled_from(STEP_WORDS), max_size=3),
                      st.dictionaries(st.sampled_from(["port", "size", "v", "A"]),
                                      st.dictionaries(st.sampled_from(["regex", "pick", "match", "pipe"]),
                                                      st.sampled_from(STEP_WORDS), max_size=2), max_size=2))
plausible_step = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS)},
    optional={"use": st.sampled_from(["t", "g", "nope"]),
              **{k: plausible for k in ["id", "device", "cmd", "args", "captures", "requires", "when", "duration",
                                        "timeout", "check", "checks", "content", "vars", "results", "parser",
                                        "condition", "to", "interface", "san", "env"]}})
GOOD_TOPOLOGY = {"router": [{"name": "dc"}, {"name": "home", "nat": "home"}],
                 "device": {"a": {"eth0": {"gateway": "dc"}}, "b": {"eth0": {"gateway": "home"}},
                            "srv": {"count": 2, "eth0": {"gateway": "dc"}}}}
plausible_documents = st.fixed_dictionaries({
    "sim": st.just({"name": "f"}),
    "step": st.lists(plausible_step, max_size=6),
}, optional={
    "matrix": st.just({"x": ["1", "2"]}),
    "step-template": st.lists(plausible_step.map(lambda d: {**d, "name": "t"}), max_size=2),
    "step-group": st.lists(st.fixed_dictionaries({"name": st.just("g"), "step": st.lists(plausible_step, max_size=3)}),
                           max_size=1),
    "binary": st.just([{"name": "tool", "path": "/bin/true"}]),
}).map(lambda d: {**d, **GOOD_TOPOLOGY})


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(doc: dict[str, Any]) -> str:
    return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items()) + "\n"


def only_sim_errors(text: str, path: Path) -> None:
    try:
        sims = load_sim_text(text, path)
    except pb.SimError as exc:
        str(exc)  # renders
        if exc.__cause__ is not None:
            assert isinstance(exc.__cause__, (pb.TopologyError, pb.SimError)), repr(exc.__cause__)
        return
    for sim in sims:
        assert sim.name and sim.topology is not None


# SIM_FUZZ_EXAMPLES=5000 for a long local run.
FUZZ = settings(max_examples=int(os.environ.get("SIM_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(doc=documents)
def test_structured_documents_give_only_sim_errors(tmp_path: Path, doc: dict[str, Any]) -> None:
    only_sim_errors(to_toml(doc), tmp_path / "sim.toml")


@FUZZ
@given(doc=plausible_documents)
def test_plausible_steps_give_only_sim_errors(tmp_path: Path, doc: dict[str, Any]) -> None:
    only_sim_errors(to_toml(doc), tmp_path / "sim.toml")


@pytest.mark.parametrize("depth", [50, 400, 3000])
def test_deep_nesting_is_a_sim_error(tmp_path: Path, depth: int) -> None:
    for text in ("x = " + "[" * depth + "]" * depth + "\n", "[sim]\nname = " + "{a = " * depth + "1" + "}" * depth):
        only_sim_errors(text, tmp_path / "sim.toml")


SEEDS = [(BOOK / name).read_text() for name in ("iperf-baseline.toml", "ping-latency.toml", "iroh-1to1-nat.toml")]
edits = st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 8),
                           st.text(alphabet="[]{}=\"'.,$#\n abc0-_", max_size=6)), min_size=1, max_size=4)


@FUZZ
@given(seed=st.sampled_from(SEEDS), changes=edits)
def test_mutated_book_examples_give_only_sim_errors(tmp_path: Path, seed: str,
                                                    changes: list[tuple[int, int, str]]) -> None:
    text = seed
    for pos, cut, insert in changes:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut:]
    # Next to the book's files: extends and topos/ resolve as for the originals.
    only_sim_errors(text, BOOK / "fuzzed.toml")
