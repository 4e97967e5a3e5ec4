"""What a lab writes into its output directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import patchbay_core as pb

pytestmark = pytest.mark.anyio


async def test_events_state_and_command_logs(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(label="logged", outdir=pb.OutDir.exact(tmp_path))) as lab:
        assert lab.outdir == tmp_path
        r = await lab.add_router("r").build()
        d = await lab.add_device("d").iface("eth0", r).build()
        proc = await d.spawn_command(["sh", "-c", "echo out; echo err >&2"])
        assert await proc.wait() == 0
        state = json.loads((tmp_path / "state.json").read_text())
        assert [x["name"] for x in state["routers"]] == ["r"]
        assert state["devices"][0]["ifaces"][0] == {
            "name": "eth0", "router": "r", "ip": str(d.ip), "prefixlen": 24,
            "gateway": str(r.gateway_ip), "ip6": None, "link_up": True, "extra_ips": [], "up": None, "down": None,
        }
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["lab_created", "router_added", "iface_added", "device_added", "iface_added",
                     "command_spawned", "command_exited", "lab_closed"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    spawned = next(e for e in events if e["kind"] == "command_spawned")
    assert spawned["node"] == "d" and spawned["argv"] == ["sh", "-c", "echo out; echo err >&2"]
    assert (tmp_path / "device.d.stdout.log").read_text() == "out\n"
    assert (tmp_path / "device.d.stderr.log").read_text() == "err\n"


async def test_outdir_from_the_environment_nests_a_run_directory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_OUTDIR", str(tmp_path))
    async with pb.Lab(pb.LabOpts(label="from env")) as lab:
        await lab.add_router("r").build()
        run_dir = lab.outdir
    assert run_dir.parent == tmp_path and run_dir.name.endswith("-from-env")
    assert (run_dir / "events.jsonl").exists()


async def test_no_outdir_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_OUTDIR", raising=False)
    monkeypatch.chdir(tmp_path)
    async with pb.Lab() as lab:
        await lab.add_router("r").build()
        assert lab.outdir is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.patchbay(label="marked")
async def test_the_fixture_takes_options_from_the_marker(lab: pb.Lab) -> None:
    assert lab.label == "marked"
