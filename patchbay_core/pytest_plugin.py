"""pytest plugin (entry point `pytest11`): an async `lab` fixture.

    async def test_ping(lab):
        dc = await lab.add_router("dc").build()
        ...

The fixture runs under anyio's pytest plugin (it requests `anyio_backend`, "asyncio" unless
a test overrides it). `@pytest.mark.patchbay(**LabOpts fields)` sets lab options.

Every test's lab writes its events, state and node logs into a directory of its own:
`<root>/<test id>/`, where the root is `--patchbay-outdir DIR`, else env PATCHBAY_OUTDIR, else
`patchbay/` in pytest's base temp dir (shared by xdist workers; pytest keeps the last few
sessions). `patchbay serve --testdir` finds them there.

A machine that cannot host a lab (no privileges, no network namespaces, ...) skips the lab
tests with what `patchbay doctor` says is missing; with env CI=true they fail instead, so a
CI run never goes green with every lab test skipped.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .errors import PatchbayError
from .lab import Lab
from .opts import LabOpts, OutDir

_VERDICT = pytest.StashKey[str | None]()
_ROOT = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("patchbay")
    group.addoption("--patchbay-outdir", default=None,
                    help="write each test's lab events and logs under this directory "
                         "(default: $PATCHBAY_OUTDIR, else patchbay/ in pytest's base temp dir)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "patchbay(**opts): LabOpts fields for the `lab` fixture")


def _test_dir_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_")[:200] or "test"


def _pytest_temproot() -> Path:
    # How pytest names its base temp dirs (TempPathFactory.getbasetemp).
    temproot = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    try:
        user = re.sub(r"[\W]", "_", getpass.getuser()) or "unknown"
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return temproot / f"pytest-of-{user}"


def default_testdir() -> Path:
    """Where `patchbay serve --testdir` looks: $PATCHBAY_OUTDIR, else patchbay/ in pytest's
    newest base temp dir (`pytest-current`)."""
    env = os.environ.get("PATCHBAY_OUTDIR")
    if env:
        return Path(env)
    return _pytest_temproot() / "pytest-current" / "patchbay"


def _outdir_root(request: pytest.FixtureRequest, factory: pytest.TempPathFactory) -> Path:
    config = request.config
    if _ROOT not in config.stash:
        root = config.getoption("--patchbay-outdir") or os.environ.get("PATCHBAY_OUTDIR")
        if root:
            config.stash[_ROOT] = Path(root)
        else:
            base = factory.getbasetemp()
            if os.environ.get("PYTEST_XDIST_WORKER"):
                base = base.parent  # pytest-N/popen-gwK: one directory for every worker
            config.stash[_ROOT] = base / "patchbay"
    return config.stash[_ROOT]


def _test_outdir(request: pytest.FixtureRequest, factory: pytest.TempPathFactory) -> Path:
    """`<root>/<test id>`; `-2`, `-3`... when it is taken (a second session into the same
    --patchbay-outdir): earlier runs are kept, like the book's testdir."""
    root = _outdir_root(request, factory)
    root.mkdir(parents=True, exist_ok=True)
    base = _test_dir_name(request.node.nodeid)
    n = 1
    while True:
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _doctor_verdict(config: pytest.Config) -> str | None:
    """None when `patchbay doctor` says labs can run here, else its failed checks (asked once
    a session)."""
    if _VERDICT not in config.stash:
        from . import doctor

        try:
            report = doctor.run_checks()
        except Exception as exc:  # the doctor itself cannot run: that says enough
            config.stash[_VERDICT] = f"patchbay doctor could not run: {exc}"
        else:
            failed = [f"{c.name}: {c.detail}" for c in report.checks if c.required and not c.ok]
            config.stash[_VERDICT] = None if report.labs_can_run else "; ".join(failed) or "see `patchbay doctor`"
    return config.stash[_VERDICT]


def _cannot_run(reason: str) -> None:
    message = f"patchbay: labs cannot run on this machine ({reason}). Run `patchbay doctor` for details."
    if _ci():
        pytest.fail(message + " CI=true: failing instead of skipping, so CI cannot pass with no lab run.",
                    pytrace=False)
    pytest.skip(message)


@pytest.fixture
async def lab(request: pytest.FixtureRequest, anyio_backend: Any,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    config = request.config
    if _VERDICT in config.stash and config.stash[_VERDICT] is not None:
        _cannot_run(config.stash[_VERDICT])  # type: ignore[arg-type]
    marker = request.node.get_closest_marker("patchbay")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    kwargs.setdefault("label", request.node.name)
    if "outdir" not in kwargs:
        kwargs["outdir"] = OutDir.exact(_test_outdir(request, tmp_path_factory))
    the_lab = Lab(LabOpts(**kwargs))
    failure: PatchbayError | None = None
    try:
        await the_lab.start()
    except PatchbayError as exc:
        failure = exc
    if failure is not None:
        # Only now ask the doctor (a healthy machine never pays for it): is it this machine?
        reason = _doctor_verdict(config)
        if reason is not None:
            _cannot_run(reason)
        raise failure
    try:
        yield the_lab
    finally:
        await the_lab.close()
