"""Fixtures every test suite shares, registered by the root ``conftest.py``.

``postgres``: (url, a fresh schema dropped afterwards) on the PostgreSQL this machine offers; the test is skipped,
with the reason, when none answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .testing import fresh_postgres


@pytest.fixture
async def postgres() -> AsyncIterator[tuple[str, str]]:
    async with fresh_postgres() as db:
        yield db
