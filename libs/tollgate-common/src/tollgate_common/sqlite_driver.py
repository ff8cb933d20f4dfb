"""SQLAlchemy's aiosqlite adapter with one thread hop per statement instead of four.

aiosqlite runs each SQLite connection in its own thread; SQLAlchemy's adapter makes a separate round trip to that
thread to open a cursor, execute, fetch the rows and close the cursor. Each round trip is a thread hand-off and an
event-loop wake-up, which on a busy core costs far more than the statement itself (billing's Authorize is five
statements and a commit). This adapter does the four steps in one function run in the connection's thread, and keeps
only what SQLAlchemy reads afterwards (rows, description, rowcount, lastrowid). Same thread, same connection, same
transactions: only the number of hand-offs changes. Server-side cursors keep the stock behaviour. A rollback with no
transaction open (the pool's reset after every commit) makes no round trip at all.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

__all__ = ["one_hop_aiosqlite"]


class _Outcome:
    """What a finished statement leaves for SQLAlchemy to read (the sqlite3 cursor itself is already closed)."""

    __slots__ = ("description", "lastrowid", "rowcount")

    def __init__(self, description: Any = None, rowcount: int = -1, lastrowid: int | None = None) -> None:
        self.description = description
        self.rowcount = rowcount
        self.lastrowid = lastrowid


_NOTHING = _Outcome()


def _run(conn: aiosqlite.Connection, operation: Any, parameters: Any, many: bool) -> tuple[_Outcome, list[Any]]:
    """In the connection's thread: open a cursor, execute, fetch, close."""
    cursor = conn._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return _Outcome(cursor.description, cursor.rowcount, cursor.lastrowid), rows
    finally:
        cursor.close()


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: Any) -> None:  # no cursor is opened until a statement runs
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = _NOTHING  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            outcome, rows = await self._connection._execute(  # type: ignore[attr-defined]
                _run, self._connection, operation, parameters, many
            )
        self._cursor = outcome  # type: ignore[assignment]
        self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._run(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._run(operation, seq_of_parameters, True)

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()


class _OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = _OneHopCursor

    def rollback(self) -> None:
        """Skip the round trip when there is nothing to roll back: the pool resets every connection it gets back,
        also after a commit (every write transaction), and a rollback outside a transaction does nothing."""
        raw = self._connection._connection  # type: ignore[attr-defined]  # aiosqlite's sqlite3 connection
        if raw is not None and not raw.in_transaction:
            return
        super().rollback()


class _OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _OneHopConnection:
        connection = super().connect(*arg, **kw)
        connection.__class__ = _OneHopConnection  # same slots: only the cursor class differs
        return connection  # type: ignore[return-value]


def one_hop_aiosqlite() -> AsyncAdapt_aiosqlite_dbapi:
    """The DBAPI module to pass as ``module=`` to ``create_async_engine`` for a ``sqlite+aiosqlite`` URL."""
    return _OneHopDbapi(aiosqlite, sqlite3)
