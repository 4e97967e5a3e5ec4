"""The work tree of `patchbay run`: results.json exactly as the book shows, and the shapes of
manifest.json, progress.json (live), combined-results.*, sim.json, events.jsonl and the node
logs as docs/sim.md documents them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from patchbay_core.sim.runner import NoSims, RunOptions, run_paths, sim_files
from tests.sims.helpers import BOOK, EMIT, HERE, REPO, run, sim_text, write

pytestmark = pytest.mark.anyio

IPERF_JSON = '{"start": {}, "end": {"sum_received": {"bytes": 1234567890, "seconds": 10.05}}}'


async def test_results_json_is_exactly_the_books(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        action = "run"
        id = "iperf-run"
        device = "a"
        parser = "json"
        cmd = [{EMIT}, 'json:{IPERF_JSON}']
        [step.captures.bytes]
        pick = ".end.sum_received.bytes"
        [step.captures.seconds]
        pick = ".end.sum_received.seconds"
        [step.results]
        duration = "iperf-run.seconds"
        down_bytes = "iperf-run.bytes"
    """, name="iperf-baseline")
    result = await run(tmp_path, text)
    assert result.ok
    written = (result.output.root / "iperf-baseline" / "results.json").read_text()
    assert written == (HERE / "golden" / "results.json").read_text()
    md = (result.output.root / "iperf-baseline" / "results.md").read_text()
    assert "| sim | id | down_bytes | elapsed_s | mb_s |" in md
    assert "| iperf-baseline | iperf-run | 1234567890 | 10.050 | 122.84 |" in md


async def test_the_books_iperf_sim_runs_and_fills_results_json(tmp_path: Path) -> None:
    shutil.copytree(BOOK / "topos", tmp_path / "topos")
    text = (BOOK / "iperf-baseline.toml").read_text()
    text = text.replace('"-t", "10"', '"-t", "1"').replace('ready_after = "1s"', 'ready_after = "300ms"')
    result = await run(tmp_path, text, name="iperf-baseline.toml")
    assert result.ok, result.records[0].error
    doc = json.loads((result.output.root / "iperf-baseline" / "results.json").read_text())
    golden = json.loads((HERE / "golden" / "results.json").read_text())
    assert list(doc) == list(golden) and doc["sim"] == "iperf-baseline"
    (step,) = doc["steps"]
    assert list(step) == list(golden["steps"][0])
    assert step["id"] == "iperf-run" and step["latency_ms"] is None and step["up_bytes"] is None
    assert re.fullmatch(r"\d+", step["down_bytes"]) and 0.9 < float(step["duration"]) < 1.5
    assert (result.records[0].results[0].down_mb_s() or 0) > 1


def shape(value: Any) -> Any:
    """Keys (recursively) of a JSON value: what docs/sim.md documents for each file."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value and isinstance(value[0], (dict, list)) else []
    return None


def documented(name: str) -> Any:
    """The example of `name` in docs/sim.md (a ```json block after `<!-- shape: NAME -->`)."""
    text = (REPO / "docs" / "sim.md").read_text()
    m = re.search(rf"<!-- shape: {re.escape(name)} -->\s*```json\n(.*?)```", text, re.DOTALL)
    assert m, f"docs/sim.md documents no shape of {name}"
    return json.loads(m.group(1))


FREE_FORM = ("variant", "captures")  # maps of names to strings, whatever the sim has


def same_shape(actual: Any, doc: Any, where: str = "") -> None:
    if isinstance(doc, dict):
        assert isinstance(actual, dict), where
        if where.rsplit(".", 1)[-1] in FREE_FORM:
            assert all(isinstance(v, str) for v in actual.values()), where
            return
        assert list(actual) == list(doc), f"{where}: {list(actual)} != documented {list(doc)}"
        for key in doc:
            if actual[key] is not None and doc[key] is not None:
                same_shape(actual[key], doc[key], f"{where}.{key}")
    elif isinstance(doc, list) and doc and isinstance(doc[0], dict):
        assert isinstance(actual, list), where
        for i, item in enumerate(actual):
            same_shape(item, doc[0], f"{where}[{i}]")


async def test_work_tree_and_file_shapes(tmp_path: Path) -> None:
    good = sim_text(f"""
        [[step]]
        action = "spawn"
        id = "srv"
        device = "b"
        cmd = [{EMIT}, "out:port 7000", "err:listening", "sleep:0.2"]
        [step.captures.port]
        regex = "port (\\\\d+)"
        [[step]]
        id = "get"
        device = "a"
        cmd = [{EMIT}, "out:got 2000000 bytes in 1.0 s, rtt 4.5"]
        [step.captures.bytes]
        regex = "got (\\\\d+)"
        [step.captures.secs]
        regex = "in ([\\\\d.]+) s"
        [step.captures.rtt]
        regex = "rtt ([\\\\d.]+)"
        [step.results]
        down_bytes = ".bytes"
        duration = ".secs"
        latency_ms = ".rtt"
        [[step]]
        action = "wait-for"
        id = "srv"
        [[step]]
        action = "gen-file"
        id = "note"
        content = "port ${{srv.port}}"
    """, name="good")
    bad = sim_text('[[step]]\naction = "wait"\nduration = "100ms"\n[[step]]\ndevice = "a"\ncmd = ["false"]\n',
                   name="bad")
    write(tmp_path, {"good.toml": good, "bad.toml": bad})
    work = tmp_path / "work"
    result = await run_paths([tmp_path / "good.toml", tmp_path / "bad.toml"], RunOptions(work_dir=work))
    root = result.output.root
    assert re.fullmatch(r"sim-\d{6}-\d{6}", root.name)
    assert (work / "latest").is_symlink() and (work / "latest").readlink() == Path(root.name)
    assert sorted(p.name for p in root.iterdir()) == ["bad", "combined-results.json", "combined-results.md", "good",
                                                      "manifest.json", "progress.json"]

    manifest = json.loads((root / "manifest.json").read_text())
    same_shape(manifest, documented("manifest.json"))
    assert manifest["status"] == "done" and manifest["success"] is False and manifest["run"] == root.name
    assert [(s["sim"], s["status"], s["sim_json"]) for s in manifest["simulations"]] == [
        ("good", "ok", "good/sim.json"), ("bad", "error", "bad/sim.json")]

    progress = json.loads((root / "progress.json").read_text())
    same_shape(progress, documented("progress.json"))
    assert (progress["status"], progress["total"], progress["completed"], progress["ok"], progress["error"]) == \
        ("done", 2, 2, 1, 1)

    combined = json.loads((root / "combined-results.json").read_text())
    same_shape(combined, documented("combined-results.json"))
    (run_good, run_bad) = combined["runs"]
    assert run_good["sim"] == "good" and run_bad["steps"] == []
    assert run_good["steps"] == [{"id": "get", "duration": "1.0", "down_bytes": "2000000", "latency_ms": "4.5",
                                  "up_bytes": None, "elapsed_s": 1.0, "down_mb_s": 2.0, "up_mb_s": None}]
    md = (root / "combined-results.md").read_text()
    assert "| Sim | Status | N | Max Down (MB/s) | Min Latency (ms) |" in md and "| good | ok | 1 | 2.00 | 4.5 |" in md

    info = json.loads((root / "good" / "sim.json").read_text())
    same_shape(info, documented("sim.json"))
    assert info["status"] == "ok" and info["error"] is None and info["setup"]["topology_mode"] == "inline"
    assert info["captures"]["note.path"] == str(root / "good" / "files" / "note" / "content")
    assert (root / "good" / "files" / "note" / "content").read_text() == "port 7000"
    for entry in info["logs"]:
        assert (root / "good" / entry["path"]).stat().st_size == entry["bytes"] > 0
    assert sorted(e["path"] for e in info["logs"]) == ["nodes/a/stdout.log", "nodes/b/stderr.log",
                                                      "nodes/b/stdout.log"]
    failed = json.loads((root / "bad" / "sim.json").read_text())
    same_shape(failed, documented("sim.json"))
    assert failed["status"] == "error" and failed["error"]["phase"] == "steps"
    assert failed["error"]["step"] == {"index": 1, "action": "run", "id": None, "device": "a"}
    assert "'false' on 'a' exited with status 1" in failed["error"]["message"]
    assert json.loads((root / "bad" / "results.json").read_text()) == {"sim": "bad", "steps": []}

    events = [json.loads(line) for line in (root / "good" / "events.jsonl").read_text().splitlines()]
    assert all(list(e)[:3] == ["ts", "kind", "node"] for e in events)
    kinds = [e["kind"] for e in events]
    for kind in ("sim_started", "lab_created", "router_added", "device_added", "step_started", "step_process_started",
                 "capture", "step_process_exited", "step_result", "step_finished", "lab_closed", "sim_finished"):
        assert kind in kinds, kind
    assert kinds[0] == "sim_started" and kinds[-1] == "sim_finished"
    assert (root / "good" / "state.json").is_file()  # the lab's own topology snapshot

    second = await run_paths([tmp_path / "good.toml"], RunOptions(work_dir=work))
    assert second.output.root != root and (work / "latest").readlink() == Path(second.output.root.name)


async def test_progress_json_is_live(tmp_path: Path) -> None:
    path = write(tmp_path, {"sim.toml": sim_text('[[step]]\naction = "wait"\nduration = "200ms"\n'
                                                 '[[step]]\naction = "wait"\nduration = "1s"\n')})
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            files = list((tmp_path / "work").glob("sim-*/progress.json"))
            if files:
                doc = json.loads(files[0].read_text())
                if doc["simulations"][0]["step"] is not None and doc not in seen:
                    seen.append(doc)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        result = await run_paths([path], RunOptions(work_dir=tmp_path / "work"))
        tg.cancel_scope.cancel()
    assert result.ok
    steps = [(d["status"], d["simulations"][0]["status"], d["simulations"][0]["step"]["index"],
              d["simulations"][0]["steps_done"]) for d in seen]
    assert ("running", "running", 1, 1) in steps
    assert json.loads((result.output.root / "progress.json").read_text())["status"] == "done"


async def test_a_file_that_does_not_load_is_a_failed_sim(tmp_path: Path) -> None:
    write(tmp_path, {"ok.toml": sim_text('[[step]]\naction = "wait"\nduration = "10ms"\n', name="fine"),
                     "broken.toml": sim_text('[[step]]\naction = "wiat"\n')})
    result = await run_paths([tmp_path / "ok.toml", tmp_path / "broken.toml"], RunOptions(work_dir=tmp_path / "w"))
    assert [(r.name, r.status) for r in result.records] == [("fine", "ok"), ("broken", "error")]
    broken = json.loads((result.output.root / "broken" / "sim.json").read_text())
    assert broken["error"]["phase"] == "load" and broken["error"]["key"] == "step[0].action"
    line = (tmp_path / "broken.toml").read_text().splitlines().index('action = "wiat"') + 1
    assert "unknown action 'wiat'" in broken["error"]["message"] and broken["error"]["line"] == line


async def test_filter_and_inputs(tmp_path: Path) -> None:
    text = '[matrix]\nn = ["alpha", "beta", "gamma"]\n' + sim_text('[[step]]\naction = "wait"\nduration = "10ms"\n',
                                                                   name="x-${matrix.n}")
    result = await run(tmp_path, text, filter="beta")
    assert [r.name for r in result.records] == ["x-beta"]
    result = await run(tmp_path, text, filter="x-*a")
    assert [r.name for r in result.records] == ["x-alpha", "x-beta", "x-gamma"]
    with pytest.raises(NoSims, match="no sim matches --filter 'delta'"):
        await run(tmp_path, text, filter="delta")
    with pytest.raises(NoSims, match="no such sim file"):
        await run_paths([tmp_path / "nope.toml"], RunOptions(work_dir=tmp_path / "w"))


def test_directories_hold_sims_but_not_topologies_or_defaults() -> None:
    found = [p.name for p in sim_files([REPO / "sims"])]
    assert found == ["holepunch.toml", "iperf-baseline.toml", "nat-links.toml", "ping-latency.toml"]
