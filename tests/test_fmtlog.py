"""`patchbay fmt-log`: JSON-lines logs as console lines."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

import patchbay_core as pb
from patchbay_core import fmtlog
from patchbay_core.cli import main

TS = 1733059941.977
RECORD = {"ts": TS, "level": "WARNING", "logger": "myapp.net", "message": "slow peer", "node": "laptop",
          "kind": "device", "thread": "MainThread", "peer": "198.18.1.2", "rtt_ms": 250}
CLI = [sys.executable, "-c", "import sys; from patchbay_core.cli import main; sys.exit(main())"]


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.") + f"{int(round(ts % 1, 3) * 1000):03d}"


def test_a_log_record_reads_like_a_console_line() -> None:
    line = fmtlog.format_record(RECORD)
    assert line == f"{stamp(TS)} WARNING laptop  myapp.net: slow peer peer=198.18.1.2 rtt_ms=250"
    with_exc = fmtlog.format_record({**RECORD, "level": "ERROR", "exc": "Traceback (most recent call last):\n"
                                     "  File \"x.py\", line 1\nValueError: boom\n"})
    first, *rest = with_exc.split("\n")
    assert "ERROR laptop  myapp.net: slow peer" in first and "exc=" not in first
    assert rest == ["    Traceback (most recent call last):", '      File "x.py", line 1', "    ValueError: boom"]
    coloured = fmtlog.format_record(RECORD, color=True)
    assert "\x1b[33mWARNING\x1b[0m" in coloured and "\x1b[1mlaptop\x1b[0m" in coloured


def test_lab_events_and_plain_lines() -> None:
    event = {"ts": TS, "kind": "router_added", "node": "dc", "name": "dc", "nat": None, "pool": "public",
             "uplink": {"iface": "ix", "ip": "198.18.0.10"}}
    assert fmtlog.format_record(event) == (f"{stamp(TS)} EVENT dc  router_added pool=public "
                                           'uplink={"iface":"ix","ip":"198.18.0.10"}')
    assert fmtlog.format_line('{"ts": 1, "kind": "lab_closed", "node": null}\n').endswith("EVENT  lab_closed")
    assert fmtlog.format_line("iperf3: connected\n") == "iperf3: connected"
    assert fmtlog.format_line('{"half": ') == '{"half": '
    assert fmtlog.format_line('["not", "a record"]') == '["not", "a record"]'
    assert fmtlog.format_line("   \n") is None


def test_the_cli_renders_a_file_and_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "device.laptop.log.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "level": "INFO", "message": "ok"}) + "\n")
    assert main(["fmt-log", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "slow peer" in out[0] and out[1].endswith("myapp.net: ok peer=198.18.1.2 rtt_ms=250")
    assert "\x1b[" not in "".join(out)  # not a terminal: no colours
    assert main(["fmt-log", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err
    done = subprocess.run([*CLI, "fmt-log", "-"], input=path.read_text(), capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.splitlines() == out


def test_colours_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "x.log.jsonl"
    path.write_text(json.dumps(RECORD) + "\n")
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen([*CLI, "fmt-log", str(path)], stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    assert b"\x1b[33mWARNING" in output


def test_follow_prints_appended_lines_like_tail_f(tmp_path: Path) -> None:
    path = tmp_path / "device.a.log.jsonl"
    path.write_text(json.dumps({**RECORD, "message": "before"}) + "\n")
    proc = subprocess.Popen([*CLI, "fmt-log", "-f", str(path)], stdout=subprocess.PIPE, text=True, bufsize=1)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines and "before" in lines[0]
        with open(path, "a") as f:
            f.write(json.dumps({**RECORD, "message": "appended"})[:30])  # half a line: nothing yet
            f.flush()
            time.sleep(0.5)
            assert len(lines) == 1
            f.write(json.dumps({**RECORD, "message": "appended"})[30:] + "\n")
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(lines) == 2 and "myapp.net: appended" in lines[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_follow_starts_over_when_the_file_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("one\ntwo\n")
    lines = fmtlog.follow(str(path), interval=0.01)
    assert [next(lines), next(lines)] == ["one", "two"]

    def truncate() -> None:
        time.sleep(0.1)
        path.write_text("three\n")

    threading.Thread(target=truncate).start()
    assert next(lines) == "three"
    lines.close()
    assert list(fmtlog.follow(str(tmp_path / "none.jsonl"), interval=0.01, stop_after=0.05)) == []


@pytest.mark.anyio
async def test_a_real_labs_events_render(tmp_path: Path) -> None:
    async with pb.Lab(pb.LabOpts(label="fmt", outdir=pb.OutDir.exact(tmp_path))) as lab:
        r = await lab.add_router("r").nat(pb.Nat.HOME).build()
        await lab.add_device("d").iface("eth0", r).build()
    raw = (tmp_path / "events.jsonl").read_text().splitlines()
    out = list(fmtlog.render(raw))
    assert len(out) == len(raw) and all(" EVENT " in line for line in out)
    assert any(" EVENT r  router_added " in line and "nat={" in line for line in out)
    assert out[-1].endswith("lab_closed")
