"""The `patchbay` command: doctor and demo."""

from __future__ import annotations

import subprocess
import sys


def patchbay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "patchbay_core.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_doctor_says_what_this_kernel_has() -> None:
    out = patchbay("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    marks = ("ok  ", "FAIL", "no  ")
    lines = {line.split()[1]: line.split()[0] for line in out.stdout.splitlines() if line[:4] in marks}
    for required in ("privileges", "network", "veth", "bridge", "macvlan", "nf_tables", "PID"):
        assert lines[required] == "ok", out.stdout
    assert "labs can run here" in out.stdout
    # This project's machines have no sch_netem: the doctor must notice and name the fallback.
    netem_missing = lines["netem"] == "no"
    expected = "wire" if netem_missing else "netem"
    assert f'link_backend="auto" picks: {expected}' in out.stdout


def test_demo_runs_and_reports() -> None:
    out = patchbay("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "patchbay demo report" in out.stdout
    assert ": OK" in out.stdout
