"""`patchbay run` and `patchbay compare` as commands: exit status, plain and rich progress,
the summary, Ctrl-C, regression gating, and a sims/ example end to end."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import alive, processes_in
from tests.sims.helpers import REPO, sim_text, write

WAIT = '[[step]]\naction = "wait"\nduration = "10ms"\n'


def patchbay(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "patchbay_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_run_exit_status_plain_progress_and_summary(tmp_path: Path) -> None:
    ok = write(tmp_path, {"ok.toml": sim_text(WAIT, name="fine")})
    bad = write(tmp_path, {"bad.toml": sim_text('[[step]]\ndevice = "a"\ncmd = ["false"]\n', name="broken")})
    work = str(tmp_path / "work")
    out = patchbay("run", str(ok), "--work-dir", work)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("patchbay run sim-") and "1 sim, output in" in lines[0]
    assert "[fine] step 1/1: wait" in lines and any(line.startswith("[fine] ok in ") for line in lines)
    assert any(line.split()[:3] == ["sim", "status", "steps"] for line in lines)
    assert any(line.split()[:3] == ["fine", "ok", "1/1"] for line in lines)
    assert "done: 1/1 ok, 0 failed" in out.stdout and "\x1b[" not in out.stdout  # no colours in a pipe

    out = patchbay("run", str(ok), str(bad), "--work-dir", work, "--jobs", "2")
    assert out.returncode == 1
    assert "[broken] FAILED after" in out.stdout and "'false' on 'a' exited with status 1" in out.stdout
    assert "done: 1/2 ok, 1 failed" in out.stdout

    out = patchbay("run", str(ok), "--work-dir", work, "--filter", "nothing-like-it")
    assert out.returncode == 2 and "no sim matches --filter 'nothing-like-it'" in out.stderr
    out = patchbay("run", str(tmp_path / "missing.toml"), "--work-dir", work)
    assert out.returncode == 2 and "no such sim file" in out.stderr
    out = patchbay("--help")
    assert "run" in out.stdout and "compare" in out.stdout and "doctor" in out.stdout and "lab" in out.stdout


def test_run_on_a_terminal_shows_a_live_table(tmp_path: Path) -> None:
    sim = write(tmp_path, {"ok.toml": sim_text('[[step]]\naction = "wait"\nduration = "600ms"\n', name="tty")})
    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "patchbay_core.cli", "run", str(sim), "--work-dir",
                             str(tmp_path / "w")], stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(60) == 0
    os.close(main)
    text = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in text and "summary" in text and "✓" in text and "1/1 wait" in text


def test_ctrl_c_stops_processes_marks_interrupted_and_leaves_nothing(tmp_path: Path) -> None:
    marker = f"{os.getpid() % 1000}.{time.monotonic_ns() % 1000}"
    sim = write(tmp_path, {"long.toml": sim_text(f"""
        [[step]]
        action = "spawn"
        id = "daemon"
        device = "a"
        cmd = ["sh", "-c", "sleep 777{marker} & sleep 778{marker}"]
        [[step]]
        action = "wait"
        duration = "2m"
    """, name="long")})
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "patchbay_core.cli", "run", str(sim), "--work-dir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            progress = list(work.glob("sim-*/progress.json"))
            if progress and json.loads(progress[0].read_text())["simulations"][0]["step"] == \
                    {"index": 1, "label": "wait"}:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the sim never reached its wait step")
        sleepers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).endswith(marker)]
        assert len(sleepers) == 3  # the shell and its two sleeps
        inodes = {int(os.readlink(f"/proc/{pid}/ns/net")[5:-1]) for pid in sleepers}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "[long] INTERRUPTED after" in out and "INTERRUPTED: 0/1 ok, 0 failed, 1 interrupted" in out
    root = next(work.glob("sim-*"))
    info = json.loads((root / "long" / "sim.json").read_text())
    assert info["status"] == "interrupted" and info["error"]["step"]["action"] == "wait"
    assert [s["status"] for s in info["steps"]] == ["ok", "interrupted"]
    assert json.loads((root / "manifest.json").read_text())["status"] == "interrupted"
    assert json.loads((root / "progress.json").read_text())["status"] == "interrupted"
    assert not [pid for pid in sleepers if alive(pid)]
    assert processes_in(inodes) == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def results(root: Path, sim: str, steps: list[dict[str, str | None]], status: str = "ok") -> None:
    d = root / sim
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"sim": sim, "steps": steps}))
    (d / "sim.json").write_text(json.dumps({"sim": sim, "status": status}))


def step(sid: str, down: str | None = None, latency: str | None = None) -> dict[str, str | None]:
    return {"id": sid, "duration": "1.0" if down else None, "down_bytes": down, "latency_ms": latency,
            "up_bytes": None}


def test_compare_gates_on_regressions(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    results(a, "iperf", [step("xfer", down="100000000")])
    results(a, "ping", [step("p", latency="20.0")])
    results(b, "iperf", [step("xfer", down="95000000")])  # -5 %
    results(b, "ping", [step("p", latency="21.0")])  # +5 %
    out = patchbay("compare", str(a), str(b))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["sim", "step", "metric"]
    assert any(line.split() == ["iperf", "xfer", "down", "MB/s", "100.00", "95.00", "-5.0%", "ok"] for line in lines)
    assert any(line.split() == ["ping", "p", "latency", "ms", "20.00", "21.00", "+5.0%", "ok"] for line in lines)
    assert lines[-1] == "no regression beyond 10%"
    out = patchbay("compare", str(a), str(b), "--max-regression", "4%")
    assert out.returncode == 1 and "2 regressions beyond 4% (B worse than A)" in out.stdout
    assert out.stdout.count("WORSE") == 2
    out = patchbay("compare", str(b), str(a), "--max-regression", "4")
    assert out.returncode == 0 and out.stdout.count("better") == 2  # the other way round

    c = tmp_path / "c"
    results(c, "iperf", [], status="error")
    out = patchbay("compare", str(a), str(c))
    assert out.returncode == 1 and "FAILED" in out.stdout and "MISSING" in out.stdout
    out = patchbay("compare", str(a), str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "no such run directory" in out.stderr
    out = patchbay("compare", str(a), str(b), "--max-regression", "ten")
    assert out.returncode == 2 and "takes a percentage" in out.stderr


def test_a_sims_example_runs_end_to_end_and_compares(tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    out = patchbay("run", "sims/holepunch.toml", "--work-dir", work, "--jobs", "3", cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    root = Path(work, "latest").resolve()
    conn = {}
    for name in ("holepunch-home", "holepunch-full-cone", "holepunch-corporate"):
        info = json.loads((root / name / "sim.json").read_text())
        assert info["status"] == "ok"
        conn[name] = (info["captures"]["peer-0.conn_type"], info["captures"]["rendezvous.conn_type"])
    assert conn == {"holepunch-home": ("Direct", "Direct"), "holepunch-full-cone": ("Direct", "Direct"),
                    "holepunch-corporate": ("Relay", "Relay")}
    results_home = json.loads((root / "holepunch-home" / "results.json").read_text())
    assert [s["id"] for s in results_home["steps"]] == ["peer-0", "peer-1"]
    out = patchbay("compare", str(root), work, "--max-regression", "10%")  # a run against itself
    assert out.returncode == 0 and "holepunch-corporate" in out.stdout, out.stdout
