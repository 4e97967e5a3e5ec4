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
    expected = "wire" if netem_missing or lines["ifb"] != "ok" else "netem"
    assert f'link_backend="auto" picks: {expected}' in out.stdout
    assert "needs /dev/net/tun" in out.stdout
    if lines["TUN"] != "ok":
        assert "link conditions are unavailable" in out.stdout
    # Rootless labs: what the host's sysctls allow, said as root too.
    from patchbay_core.userns import forbidding_sysctl

    forbidden = forbidding_sysctl()
    assert lines["user"] == ("no" if forbidden else "ok"), out.stdout
    if forbidden:
        assert forbidden[0] in out.stdout


def test_doctor_names_the_backend_and_why() -> None:
    from patchbay_core.doctor import Check, Report

    def report(netem: bool, tun: bool) -> Report:
        return Report([Check("privileges", True, ""), Check("netem qdisc", netem, "", False),
                       Check("ifb", True, "", False), Check("TUN device", tun, "", False)])

    netem_kernel = report(netem=True, tun=True)
    assert netem_kernel.link_backend == "netem"
    text = netem_kernel.render()
    assert 'link_backend="auto" picks: netem' in text and "a seed forces the wire" in text
    assert "link conditions are unavailable" not in text and "labs can run here" in text
    # Without TUN, seeded (wire) labs lose their conditions on a netem kernel, every lab on this one.
    assert "unavailable on the wire backend" in report(netem=True, tun=False).render()
    no_netem = report(netem=False, tun=False)
    assert no_netem.link_backend == "wire" and no_netem.labs_can_run
    text = no_netem.render()
    assert 'link_backend="auto" picks: wire (sch_netem is missing' in text
    assert "link conditions are unavailable here" in text and "labs can run here" in text
    # /dev/net/tun opens but no TAP can be made (TUNSETIFF refused): unusable all the same.
    refused = Report([*report(netem=False, tun=True).checks, Check("wire TAP", False, "", False)])
    assert not refused.has_tun and "link conditions are unavailable here" in refused.render()


def test_demo_runs_and_reports() -> None:
    out = patchbay("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "patchbay demo report" in out.stdout
    assert ": OK" in out.stdout
