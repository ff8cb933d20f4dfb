"""Test helpers shared by the services' test suites: which real databases and brokers this machine offers.

PostgreSQL: testcontainers when Docker answers, else 127.0.0.1:5432 (user postgres, trust auth, database ``test``)
when it answers, else tests that need it are skipped with a visible reason. Each test gets its own schema.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["fresh_postgres", "local_postgres_url", "postgres_schema", "postgres_unavailable_reason"]

LOCAL_POSTGRES = os.environ.get("TOLLGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def local_postgres_url() -> str | None:
    """The local PostgreSQL URL when something listens on its port, else None."""
    from sqlalchemy.engine import make_url

    url = make_url(LOCAL_POSTGRES)
    return LOCAL_POSTGRES if _answers(url.host or "127.0.0.1", url.port or 5432) else None


def postgres_unavailable_reason() -> str:
    return f"PostgreSQL does not answer at {LOCAL_POSTGRES} (set TOLLGATE_TEST_POSTGRES_URL to point elsewhere)"


@asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[str]:
    """A fresh schema name on ``url`` for one test, dropped afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(
        host=u.host, port=u.port or 5432, user=u.username or "postgres", password=u.password, database=u.database
    )
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()




@asynccontextmanager
async def fresh_postgres() -> AsyncIterator[tuple[str, str]]:
    """(url, fresh schema) for one test; skips the test, with the reason, when no PostgreSQL answers."""
    import pytest

    url = local_postgres_url()
    if url is None:
        pytest.skip(postgres_unavailable_reason())
    async with postgres_schema(url) as schema:
        yield url, schema
