"""The sim runner's pieces without a lab: parsers, captures, assertions, durations,
interpolation, result records."""

from __future__ import annotations

import re
import time

import anyio
import pytest

import patchbay_core as pb
from patchbay_core.sim.assertions import OPERATORS, evaluate, parse_check
from patchbay_core.sim.captures import CaptureStore
from patchbay_core.sim.durations import parse_duration
from patchbay_core.sim.interpolate import Resolver, interpolate, references, rewrite_counted
from patchbay_core.sim.model import CaptureSpec, Where
from patchbay_core.sim.parsers import OutputParser, pick
from patchbay_core.sim.results import StepResult, results_json

W = Where("sim.toml", 7, "step[2].checks[0]", "s")


def spec(name: str, **kw: object) -> CaptureSpec:
    if isinstance(kw.get("regex"), str):
        kw["regex"] = re.compile(kw["regex"])  # type: ignore[arg-type]
    return CaptureSpec(name=name, where=W, **kw)  # type: ignore[arg-type]


def feed(parser: str, captures: list[CaptureSpec], lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    p = OutputParser(parser, {c.name: c for c in captures}, lambda n, v: got.append((n, v)))
    for pipe, line in lines:
        p.line(pipe, line)
    p.finish()
    return got


def test_text_parser_regex_group_or_whole_match_per_pipe() -> None:
    got = feed("text", [spec("port", regex=r"port (\d+)"), spec("word", regex=r"ready", pipe="stderr")],
               [("stdout", "listening on port 5000"), ("stderr", "port 1"), ("stderr", "now ready!"),
                ("stdout", "port 6000")])
    assert got == [("port", "5000"), ("word", "ready"), ("port", "6000")]  # every match updates, latest wins


def test_ndjson_parser_match_and_pick_per_line() -> None:
    size = spec("size", match={"kind": "DownloadComplete"}, pick=".size")
    eid = spec("id", match={"kind": "EndpointBound", "ok": "true"}, pick=".endpoint.id")
    raw = spec("raw", regex=r"^RAW (\w+)", pick=".never")
    lines = ['{"kind": "Progress", "size": 1}', "not json", '{"kind": "DownloadComplete", "size": 4096}',
             '{"kind": "EndpointBound", "ok": true, "endpoint": {"id": "abc"}}',
             '{"kind": "EndpointBound", "ok": false, "endpoint": {"id": "no"}}', "RAW token", "[1, 2]",
             '{"kind": "DownloadComplete", "size": 8192}']
    got = feed("ndjson", [size, eid, raw], [("stdout", line) for line in lines])
    assert got == [("size", "4096"), ("id", "abc"), ("raw", "token"), ("size", "8192")]


def test_json_parser_picks_once_after_exit_and_regex_streams() -> None:
    doc = '{\n "end": {"sum_received": {"bytes": 1234567890, "seconds": 10.05}},\n "list": [{"a": "x"}]\n}'
    caps = [spec("bytes", pick=".end.sum_received.bytes"), spec("seconds", pick=".end.sum_received.seconds"),
            spec("first", pick=".list.0.a"), spec("whole", pick=".end"), spec("gone", pick=".end.nope"),
            spec("line", regex=r'"seconds": ([\d.]+)')]
    got = feed("json", caps, [("stdout", line) for line in doc.splitlines()])
    assert got == [("line", "10.05"), ("bytes", "1234567890"), ("seconds", "10.05"), ("first", "x"),
                   ("whole", '{"sum_received":{"bytes":1234567890,"seconds":10.05}}')]


def test_json_parser_warns_when_the_output_is_not_json() -> None:
    p = OutputParser("json", {"v": spec("v", pick=".v")}, lambda n, v: None)
    p.line("stdout", "oops")
    (warning,) = p.finish()
    assert "not one JSON document" in warning and "'oops'" in warning


def test_pick_paths() -> None:
    doc = {"a": {"b": [10, {"c": None}]}, "s": "str"}
    assert pick(doc, ".a.b.0") == 10 and pick(doc, ".a.b.1.c") is None and pick(doc, "s") == "str"
    assert pick(doc, ".") == doc and pick(doc, ".a.b.5") is not None and pick(doc, ".x") is not None  # missing marker


@pytest.mark.parametrize(("expr", "value", "passes"), [
    ("s.v == Direct", "Direct", True), ("s.v == Direct", "Relay", False),
    ("s.v != 0", "0", False), ("s.v != 0", "12", True),
    ("s.v contains Direct", "conn Direct(1.2.3.4)", True), ("s.v contains Direct", "Relay", False),
    ("s.v matches ^[0-9]+$", "1234", True), ("s.v matches [0-9]+", "abc", False),
    ("s.v >= 50", "50.0", True), ("s.v >= 50", "49.9", False),
    ("s.v <= 50", "50", True), ("s.v <= 50", "51", False),
    ("s.v > 0.5", "0.6", True), ("s.v > 0.5", "0.5", False),
    ("s.v < 1e3", "999", True), ("s.v < 1e3", "1000", False),
    ("s.v == ", "", True),
])
def test_assertion_operators(expr: str, value: str, passes: bool) -> None:
    check = parse_check(expr, W)
    why = evaluate(check, value, check.rhs)
    assert (why is None) == passes, why
    if not passes:
        assert f"s.v is {value!r}" in why  # type: ignore[operator]
    assert {op for op in OPERATORS} == {"==", "!=", "contains", "matches", ">=", "<=", ">", "<"}


def test_numeric_assertion_on_a_non_number_says_so() -> None:
    check = parse_check("s.v >= 3", W)
    assert "'fast', which is not a number" in (evaluate(check, "fast", "3") or "")


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("300s", 300.0),
                                               ("1.5s", 1.5), (" 10ms ", 0.01)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, W) == seconds


@pytest.mark.parametrize("text", ["3h", "10", "", "s", "1 d", "-1s", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(pb.SimError) as info:
        parse_duration(text, W)
    assert info.value.line == 7 and "step[2].checks[0]" in str(info.value) and "expected a duration" in str(info.value)


def test_references_and_counted_rewrites() -> None:
    refs = references("${binary.relay} --id ${prov.endpoint_id} $NETSIM_IP_relay ${NETSIM_IP_x} $HOME ${what}")
    assert refs.binaries == ["relay"] and refs.captures == ["prov.endpoint_id"]
    assert refs.vars == ["NETSIM_IP_relay", "NETSIM_IP_x"] and refs.unknown == ["what"]
    with pytest.raises(ValueError, match="unclosed"):
        references("${oops")
    text = "${prov.id} $NETSIM_IP_prov ${NETSIM_IP_prov} ${other.id} ${binary.prov}"
    assert rewrite_counted(text, {"prov": 2}, 3) == ("${prov-1.id} $NETSIM_IP_PROV_1 ${NETSIM_IP_PROV_1} "
                                                     "${other.id} ${binary.prov}")


class FakeResolver(Resolver):
    def __init__(self, store: CaptureStore) -> None:
        self.store = store

    def binary(self, name: str) -> str:
        return f"/bin/{name}"

    def var(self, name: str) -> str | None:
        return {"NETSIM_IP_RELAY": "10.0.0.1"}.get(name.upper())

    async def capture(self, key: str) -> str:
        return await self.store.wait(key, 2.0, W)


@pytest.mark.anyio
async def test_interpolation_waits_for_captures() -> None:
    store = CaptureStore()
    resolver = FakeResolver(store)

    async def later() -> None:
        await anyio.sleep(0.1)
        store.record("prov.id", "abc")

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        t0 = time.monotonic()
        out = await interpolate("${binary.x} ${prov.id} $NETSIM_IP_relay:3340 $HOME $NETSIM_IP_NONE", resolver)
        assert time.monotonic() - t0 >= 0.09
    assert out == "/bin/x abc 10.0.0.1:3340 $HOME $NETSIM_IP_NONE"


@pytest.mark.anyio
async def test_capture_waits_fail_at_once_when_the_producer_is_over_and_time_out_otherwise() -> None:
    store = CaptureStore()
    store.started("srv")

    async def stop() -> None:
        await anyio.sleep(0.05)
        store.over("srv", "exited with status 0")

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop)
        with pytest.raises(pb.SimError, match=r"capture 'srv.port' was never produced: step 'srv' exited with "
                                              r"status 0 without it"):
            await store.wait("srv.port", 5.0, W)
    t0 = time.monotonic()
    with pytest.raises(pb.SimError, match=r"timed out after 2\d\dms waiting for capture 'other.x'") as info:
        await store.wait("other.x", 0.2, W)
    assert 0.2 <= time.monotonic() - t0 < 1 and info.value.step == "s" and info.value.line == 7


def test_result_records_and_throughput() -> None:
    r = StepResult(id="x", duration="2000000", down_bytes="1000000")  # an integer duration is microseconds
    assert r.elapsed_s() == 2.0 and r.down_mb_s() == 0.5 and r.up_mb_s() is None
    r = StepResult(id="x", duration="10.05", down_bytes="1234567890", up_bytes="100500", latency_ms="12.5")
    assert r.elapsed_s() == 10.05 and round(r.down_mb_s() or 0, 3) == 122.843 and r.up_mb_s() == 0.01
    assert r.latency() == 12.5
    assert StepResult(id="x", duration="0", down_bytes="5").down_mb_s() is None
    assert results_json("s", []) == '{\n  "sim": "s",\n  "steps": []\n}\n'
