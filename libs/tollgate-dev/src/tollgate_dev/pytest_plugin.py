"""Fixtures every test suite shares, registered by the root ``conftest.py``.

``postgres``: (url, a fresh schema dropped afterwards) on the PostgreSQL this machine offers; the test is skipped,
with the reason, when none answers.
``mock``: the mock upstream provider, in-process on a free port, with its record of calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .mock_upstream import MockUpstream, start_mock_upstream
from .testing import fresh_postgres


@pytest.fixture
async def postgres() -> AsyncIterator[tuple[str, str]]:
    async with fresh_postgres() as db:
        yield db


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    upstream = await start_mock_upstream("127.0.0.1", 0)
    yield upstream
    await upstream.stop()
