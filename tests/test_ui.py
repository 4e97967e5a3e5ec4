"""The devtools UI in headless Chromium (Playwright), over a real lab that is still running.

Screenshots of every tab go to the test's tmp dir (and to $PATCHBAY_ARTIFACTS when set).
Chromium is Debian's (`/usr/bin/chromium`, scripts/setup.sh installs it); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

import patchbay_core as pb
from patchbay_core.capture import Capture, capture_path
from patchbay_core.devtools.server import make_app

pytestmark = pytest.mark.anyio
CHROMIUM = "/usr/bin/chromium"


def _need_browser() -> Any:
    missing = None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does)"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"the UI test cannot run: {missing}")
        pytest.skip(missing)
    return async_playwright


def log_record(ts: float, level: str, logger: str, message: str, **extra: Any) -> str:
    return json.dumps({"ts": ts, "level": level, "logger": logger, "message": message, "node": "server",
                       "kind": "device", "thread": "MainThread", **extra}) + "\n"


async def build(lab: pb.Lab) -> tuple[pb.Device, pb.Router]:
    dc = await lab.add_router("dc").build()
    home = await lab.add_router("home").nat(pb.Nat.HOME).build()
    server = await lab.add_device("server").iface("eth0", dc).build()
    laptop = await lab.add_device("laptop").iface("eth0", home, pb.LinkCondition.WIFI).build()
    run_dir = lab.outdir
    cap = await Capture.start(server.ns_fd, "server", "eth0", capture_path(run_dir, "device", "server", "eth0"))
    await laptop.ping(server.ip, count=2)
    await cap.stop()
    now = time.time()
    event = log_record(now + 0.02, "INFO", "app._events.PeerConnected", "peer connected", peer=str(laptop.ip))
    (run_dir / "device.server.log.jsonl").write_text(
        log_record(now, "INFO", "app.net", "listening on 9000")
        + log_record(now + 0.01, "DEBUG", "app.net", "handshake with peer")
        + event
        + log_record(now + 0.03, "ERROR", "app.net", "connection reset", exc="Traceback ...\nConnectionResetError"))
    (run_dir / "device.server.events.jsonl").write_text(event)
    (run_dir / "results.json").write_text(json.dumps({"sim": "ui", "steps": [
        {"id": "iperf-run", "duration": "10.05", "down_bytes": "1234567890", "latency_ms": None, "up_bytes": None},
        {"id": "ping", "duration": None, "down_bytes": None, "latency_ms": "42.5", "up_bytes": None}]}))
    return server, home


async def test_every_tab_shows_a_real_running_lab(tmp_path: Path) -> None:
    async_playwright = _need_browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    outdir = tmp_path / "runs"
    async with pb.Lab(pb.LabOpts(label="ui", outdir=outdir)) as lab:
        _server, home = await build(lab)
        run_dir = lab.outdir
        events = len((run_dir / "events.jsonl").read_text().splitlines())
        http = TestServer(make_app(outdir), host="127.0.0.1")
        await http.start_server()
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1300, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(str(http.make_url("/")))

                # Topology: the routers and devices of state.json, NAT and link labels.
                await page.wait_for_selector("#topology-svg .node.device")
                assert await page.locator("#topology-svg .node.router").count() == 2
                assert await page.locator("#topology-svg .node.device").count() == 2
                assert await page.inner_text("#device-count") == "2"
                assert "NAT EIM/APDF" in await page.text_content("#topology-svg [data-node=home]")
                assert "5ms±2" in await page.text_content("#topology-svg .labels")
                assert await page.inner_text("#live") == "live"
                await page.screenshot(path=str(shots / "topology.png"), full_page=True)

                # Events: every event, filtered by kind.
                await page.click("#tabs button[data-tab=events]")
                await page.wait_for_selector("#events-table .event-row")
                # Read at one moment: more events come while the lab runs (packet_counters).
                shown, text = await page.evaluate(
                    "() => [document.querySelectorAll('#events-table .event-row').length,"
                    " document.getElementById('events-count').textContent]")
                assert shown >= events and text == f"{shown} of {shown} events"
                kinds = await page.locator("#events-kind option").all_inner_texts()
                assert {"router_added", "device_added", "lab_created"} <= set(kinds)
                await page.select_option("#events-kind", "device_added")
                assert await page.locator("#events-table .event-row").count() == 2
                await page.screenshot(path=str(shots / "events.png"), full_page=True)

                # Logs: the server's log records; level and text filters narrow them.
                await page.click("#tabs button[data-tab=logs]")
                await page.click("#log-nodes button[data-node=server]")
                lines = page.locator("#log-lines .logline")
                assert await lines.count() == 4
                await page.select_option("#log-level", "WARNING")
                assert await lines.count() == 1 and "connection reset" in await lines.first.inner_text()
                await page.select_option("#log-level", "")
                await page.fill("#log-text", "peer")
                assert await lines.count() == 2
                await page.fill("#log-text", "")
                await page.screenshot(path=str(shots / "logs.png"), full_page=True)

                # Timeline: the custom event; a click jumps to its log line.
                await page.click("#tabs button[data-tab=timeline]")
                item = page.locator("#timeline-svg .tl-item.custom[data-label=PeerConnected]")
                await item.wait_for()
                await page.screenshot(path=str(shots / "timeline.png"), full_page=True)
                await item.click()
                await page.wait_for_selector("#tab-logs:not([hidden]) .logline.highlight")
                highlighted = page.locator(".logline.highlight")
                assert await highlighted.count() == 1 and "peer connected" in await highlighted.inner_text()
                assert await highlighted.get_attribute("data-path") == "device.server.log.jsonl"
                assert await highlighted.is_visible()

                # Results: throughput and latency bars.
                await page.click("#tabs button[data-tab=results]")
                bar = page.locator("#chart-throughput .bar.down")
                await bar.wait_for()
                assert float(await bar.get_attribute("data-value")) == pytest.approx(122.84, abs=0.01)
                assert "122.84" in await page.inner_text("#results-table")
                assert await page.locator("#chart-latency .bar").count() == 1
                await page.screenshot(path=str(shots / "results.png"), full_page=True)

                # Captures: a link to the pcapng.
                await page.click("#tabs button[data-tab=captures]")
                link = page.locator("a.capture-link")
                assert await link.inner_text() == "device.server.eth0.pcapng"
                body = await page.evaluate("async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer())[0]",
                                           await link.get_attribute("href"))
                assert body == 0x0A  # a Section Header Block starts the file
                await page.screenshot(path=str(shots / "captures.png"), full_page=True)

                # Live: a device built now appears without a reload, and so does a new log line.
                await page.click("#tabs button[data-tab=topology]")
                await lab.add_device("latecomer").iface("eth0", home).build()
                await page.wait_for_selector("#topology-svg .node.device[data-node=latecomer]", timeout=10_000)
                assert await page.inner_text("#device-count") == "3"
                await page.screenshot(path=str(shots / "topology-live.png"), full_page=True)
                with open(run_dir / "device.server.log.jsonl", "a") as f:
                    f.write(log_record(time.time(), "WARNING", "app.net", "arrived while watching"))
                await page.click("#tabs button[data-tab=logs]")
                await page.wait_for_selector(".logline:has-text('arrived while watching')", timeout=10_000)
                assert errors == []
            finally:
                await browser.close()
                await http.close()
                artifacts = os.environ.get("PATCHBAY_ARTIFACTS")
                if artifacts:
                    shutil.copytree(shots, Path(artifacts) / "ui-screenshots", dirs_exist_ok=True)
    assert sorted(p.name for p in shots.iterdir()) == ["captures.png", "events.png", "logs.png", "results.png",
                                                       "timeline.png", "topology-live.png", "topology.png"]
