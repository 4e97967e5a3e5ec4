"""Test configuration. Every test lab lives in namespaces of its own."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
