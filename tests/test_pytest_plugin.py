"""The pytest plugin, run on sample suites with pytester: per-test output directories, the
marker, and the doctor's verdict when a machine cannot host a lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchbay_core.pytest_plugin import default_testdir

pytest_plugins = ["pytester"]

SUITE = """
import json, pytest
import patchbay_core as pb

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "asyncio"

async def test_ping(lab):
    r = await lab.add_router("r").build()
    a = await lab.add_device("a").iface("eth0", r).build()
    b = await lab.add_device("b").iface("eth0", r).build()
    assert (await a.ping(b.ip)).received == 1
    print("OUTDIR", lab.outdir)

@pytest.mark.patchbay(label="marked", link_backend="wire")
async def test_marked(lab):
    assert lab.label == "marked" and lab.opts.link_backend == "wire"
    await lab.add_router("r").build()
"""

CANNOT_RUN = """
import pytest
import patchbay_core as pb
from patchbay_core import doctor, lab as lab_module

@pytest.fixture(autouse=True)
def no_namespaces(monkeypatch):
    async def refuse(self):
        raise pb.PatchbayError("creating a network namespace was refused (EPERM)")
    monkeypatch.setattr(lab_module.Lab, "start", refuse)
    report = doctor.Report([doctor.Check("privileges", False, "no CAP_NET_ADMIN: run as root"),
                            doctor.Check("netem qdisc", False, "optional", required=False)])
    monkeypatch.setattr(doctor, "run_checks", lambda: report)
"""


def outdirs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.iterdir() if p.is_dir()}


def test_every_lab_test_writes_its_own_outdir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_OUTDIR", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # the inner session is not an xdist worker
    pytester.makepyfile(test_sample=SUITE)
    result = pytester.runpytest_inprocess("-s")
    result.assert_outcomes(passed=2)
    # Where `patchbay serve --testdir` looks (pytester gave the inner session a temp root of its own).
    root = default_testdir()
    assert root.parent.name == "pytest-current"
    dirs = outdirs(root)
    assert set(dirs) == {"test_sample.py_test_ping", "test_sample.py_test_marked"}
    ping = dirs["test_sample.py_test_ping"]
    assert f"OUTDIR {ping.resolve()}" in result.stdout.str()
    state = json.loads((ping / "state.json").read_text())
    assert state["label"] == "test_ping" and [d["name"] for d in state["devices"]] == ["a", "b"]
    kinds = [json.loads(line)["kind"] for line in (ping / "events.jsonl").read_text().splitlines()]
    assert kinds[0] == "lab_created" and kinds[-1] == "lab_closed" and "device_added" in kinds
    assert json.loads((dirs["test_sample.py_test_marked"] / "state.json").read_text())["label"] == "marked"


def test_the_option_and_the_environment_choose_the_root(pytester: pytest.Pytester, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_sample=SUITE)
    chosen = tmp_path / "chosen"
    pytester.runpytest_inprocess(f"--patchbay-outdir={chosen}").assert_outcomes(passed=2)
    pytester.runpytest_inprocess(f"--patchbay-outdir={chosen}", "-k", "ping").assert_outcomes(passed=1)
    # A second session into the same directory keeps the first one's output.
    assert set(outdirs(chosen)) == {"test_sample.py_test_ping", "test_sample.py_test_ping-2",
                                    "test_sample.py_test_marked"}
    monkeypatch.setenv("PATCHBAY_OUTDIR", str(tmp_path / "env"))
    pytester.runpytest_inprocess("-k", "marked").assert_outcomes(passed=1)
    assert set(outdirs(tmp_path / "env")) == {"test_sample.py_test_marked"}


def test_a_machine_that_cannot_host_a_lab_skips_with_the_doctors_reason(pytester: pytest.Pytester,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(CANNOT_RUN)
    pytester.makepyfile(test_sample=SUITE)
    result = pytester.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*labs cannot run on this machine (privileges: no CAP_NET_ADMIN: run as root)*"])
    assert "netem" not in result.stdout.str()  # optional checks are not a reason


def test_with_ci_true_it_fails_instead_of_skipping(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(CANNOT_RUN)
    pytester.makepyfile(test_sample=SUITE)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*labs cannot run on this machine*CI=true: failing instead of skipping*"])
    assert "During handling" not in result.stdout.str()
