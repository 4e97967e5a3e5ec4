"""pytest plugin (entry point `pytest11`): an async `lab` fixture.

    async def test_ping(lab):
        dc = await lab.add_router("dc").build()
        ...

The fixture runs under anyio's pytest plugin (it requests `anyio_backend`, "asyncio" unless
a test overrides it). `@pytest.mark.patchbay(**LabOpts fields)` sets lab options; with
`--patchbay-outdir DIR` or env PATCHBAY_OUTDIR each test writes into its own directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .lab import Lab
from .opts import LabOpts, OutDir


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("patchbay")
    group.addoption("--patchbay-outdir", default=None,
                    help="write each test's lab events and logs under this directory")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "patchbay(**opts): LabOpts fields for the `lab` fixture")


def _test_dir_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_")


@pytest.fixture
async def lab(request: pytest.FixtureRequest, anyio_backend: Any) -> AsyncIterator[Lab]:
    marker = request.node.get_closest_marker("patchbay")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    kwargs.setdefault("label", request.node.name)
    root = request.config.getoption("--patchbay-outdir") or os.environ.get("PATCHBAY_OUTDIR")
    if "outdir" not in kwargs and root:
        kwargs["outdir"] = OutDir.exact(Path(root) / _test_dir_name(request.node.nodeid))
    async with Lab(LabOpts(**kwargs)) as the_lab:
        yield the_lab
