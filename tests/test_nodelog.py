"""What a lab writes about its nodes: their Python log records, command exits, packet counters."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import patchbay_core as pb

pytestmark = pytest.mark.anyio


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_log_records_from_inside_a_node_land_in_its_files(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(outdir=pb.OutDir.exact(tmp_path))) as lab:
        r = await lab.add_router("r").build()
        dev = await lab.add_device("dev").iface("eth0", r).build()
        other = await lab.add_device("other").iface("eth0", r).build()
        logging.getLogger().setLevel(logging.INFO)
        app = logging.getLogger("myapp.net")

        async def in_loop(_: pb.Device) -> None:
            app.info("from the loop")
            await anyio.to_thread.run_sync(lambda: app.info("from a worker thread"))
            logging.getLogger("myapp._events.peer").info("peer connected")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                app.exception("it failed")

        await dev.spawn(in_loop)
        dev.run_sync(lambda: app.info("from run_sync"))
        dev.spawn_thread(lambda: app.info("from spawn_thread")).result(5)
        other.run_sync(lambda: app.warning("other's record"))
        app.info("from the test itself")  # not a node's
    log = records(tmp_path / "device.dev.log.jsonl")
    assert [x["message"] for x in log] == ["from the loop", "from a worker thread", "peer connected", "it failed",
                                         "from run_sync", "from spawn_thread"]
    assert {x["node"] for x in log} == {"dev"} and {x["kind"] for x in log} == {"device"}
    assert set(log[0]) >= {"ts", "level", "logger", "message", "node", "kind", "thread"}
    assert log[0]["level"] == "INFO" and log[0]["logger"] == "myapp.net"
    assert "RuntimeError: boom" in log[3]["exc"]
    assert [x["message"] for x in records(tmp_path / "device.dev.events.jsonl")] == ["peer connected"]
    assert [x["message"] for x in records(tmp_path / "device.other.log.jsonl")] == ["other's record"]


def test_patchbay_log_filters_records(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import logging, anyio
        import patchbay_core as pb

        async def main():
            async with pb.Lab(pb.LabOpts(outdir=pb.OutDir.exact({str(tmp_path)!r}))) as lab:
                r = await lab.add_router("r").build()
                dev = await lab.add_device("dev").iface("eth0", r).build()
                def emit():
                    logging.getLogger("myapp.net").debug("net detail")
                    logging.getLogger("myapp.ui").info("ui chatter")
                    logging.getLogger("myapp.ui").warning("ui warning")
                dev.run_sync(emit)
        anyio.run(main)
    """)
    env = {**os.environ, "PATCHBAY_LOG": "warning,myapp.net=debug"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert [x["message"] for x in records(tmp_path / "device.dev.log.jsonl")] == ["net detail", "ui warning"]


async def test_command_exits_and_packet_counters_are_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_COUNTER_INTERVAL", "0.1")
    async with pb.Lab(pb.LabOpts(outdir=pb.OutDir.exact(tmp_path))) as lab:
        r = await lab.add_router("r").build()
        dev = await lab.add_device("dev").iface("eth0", r).build()
        proc = await dev.spawn_command(["sh", "-c", "sleep 0.1; exit 3"])
        assert await proc.wait() == 3
        assert (await dev.ping(r.gateway_ip, count=3, interval=0.05)).received == 3
        await anyio.sleep(0.4)
    events = records(tmp_path / "events.jsonl")
    [exited] = [e for e in events if e["kind"] == "command_exited"]
    assert exited["node"] == "dev" and exited["exit_status"] == 3 and exited["argv"][0] == "sh"
    assert exited["duration_s"] >= 0.1 and exited["pid"] > 0
    counters = [e for e in events if e["kind"] == "packet_counters" and e["node"] == "dev"]
    assert counters and counters[-1]["ifaces"]["eth0"]["tx_packets"] >= 3
