"""Rows of a service's store through the plain driver cursor (sqlite3 / asyncpg), read-only, in batches.

Why not SQLAlchemy here: the audit export reads every row of an account's history, a million and more, and the
async ORM path (aiosqlite hands each batch across a thread, SQLAlchemy wraps each row) cost more than writing the
export itself. The read-only guarantee is the same as :func:`tollgate_ops.targets.read_only_engine`'s, enforced by
the database: SQLite opened with ``mode=ro`` and ``query_only``, PostgreSQL in a read-only transaction of a session
with ``default_transaction_read_only``.

Queries are written with ``?`` placeholders (sqlite3's); for PostgreSQL they become ``$1, $2, …``. Table names are
unqualified: on PostgreSQL the session's search_path is the service's schema.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from tollgate_common.db import normalize_url

from .targets import BadUsage, Location

__all__ = ["read_rows"]

BATCH = 5000
_PLACEHOLDER = re.compile(r"\?")


async def read_rows(location: Location, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The rows ``sql`` selects, as plain tuples, ``BATCH`` at a time (the export never holds a cursor's whole
    result twice)."""
    if location.is_sqlite:
        for batch in _sqlite_rows(location, sql, params):
            yield batch
        return
    async for batch in _postgres_rows(location, sql, params):
        yield batch


def _sqlite_rows(location: Location, sql: str, params: Sequence[Any]) -> Any:
    path = location.sqlite_path()
    if path is None or not path.exists():
        raise BadUsage(f"no SQLite database at {location.url}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA query_only=ON")
        cursor = conn.execute(sql, tuple(params))
        while batch := cursor.fetchmany(BATCH):
            yield batch
    finally:
        conn.close()


async def _postgres_rows(location: Location, sql: str, params: Sequence[Any]) -> AsyncIterator[list[tuple[Any, ...]]]:
    url = make_url(normalize_url(location.url)).set(drivername="postgresql")
    numbered = iter(range(1, sql.count("?") + 1))
    query = _PLACEHOLDER.sub(lambda _: f"${next(numbered)}", sql)
    conn = await asyncpg.connect(url.render_as_string(hide_password=False), server_settings={
        "default_transaction_read_only": "on", "search_path": location.schema})
    try:
        async with conn.transaction(readonly=True):
            cursor = await conn.cursor(query, *params)
            while batch := await cursor.fetch(BATCH):
                yield [tuple(record) for record in batch]
    finally:
        await conn.close()
