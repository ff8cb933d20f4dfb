"""Plain-SQL bulk writes for the consumers' batches: one statement per table per batch, rows as tuples.

Why not ``session.execute(insert(t), [dict, ...])``: SQLAlchemy then builds and type-processes a parameter dict
per row (~5 µs a row and column group here), which is most of a batch's cost at tens of thousands of events per
second. Here rows go to the driver as they are:

- PostgreSQL: ``INSERT … SELECT * FROM unnest($1::text[], $2::int8[], …)`` — one statement and one round trip for
  the whole batch, each column sent as one array (asyncpg encodes it natively).
- SQLite: ``executemany`` of one prepared ``INSERT … VALUES (?, …)`` (in-process, no round trips); with
  ``RETURNING`` (which ``executemany`` cannot return) multi-row ``VALUES`` in chunks.

Column types come from the ``Table``, so a value the column cannot hold (an integer beyond BIGINT, a string longer
than its VARCHAR on PostgreSQL) fails the statement the way the ORM's insert would: the consumer's poison handling
then finds the row that did it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, LargeBinary, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["insert_rows", "select_rows", "update_rows", "where_id_in"]

#: SQLite's default limit is 32,766 bound parameters a statement; stay well under it.
_SQLITE_MAX_PARAMS = 30_000


def _pg_array_type(column: Any) -> str:
    t = column.type
    if isinstance(t, BigInteger):
        return "int8[]"
    if isinstance(t, Integer):
        return "int4[]"
    if isinstance(t, Boolean):
        return "bool[]"
    if isinstance(t, LargeBinary):
        return "bytea[]"
    if isinstance(t, String | Text):
        # varchar(n)[] rather than text[]: a value longer than the column fails here, as the column would.
        length = getattr(t, "length", None)
        return f"varchar({length})[]" if length else "text[]"
    raise TypeError(f"no array type for column {column.name} ({t!r})")


async def _connection(conn: AsyncConnection | AsyncSession) -> AsyncConnection:
    return await conn.connection() if isinstance(conn, AsyncSession) else conn


async def insert_rows(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    on_conflict: str = "",
    returning: Sequence[str] = (),
) -> list[Any]:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in one statement per batch.

    ``on_conflict`` is appended as written (``ON CONFLICT DO NOTHING``, ``ON CONFLICT (a, b) DO UPDATE SET x =
    t.x + excluded.x`` — both dialects spell it the same); ``returning`` names columns to return (only the rows
    actually inserted, under ``DO NOTHING``). Returns those rows (empty without ``returning``).
    """
    if not rows:
        return []
    c = await _connection(conn)
    quote = c.dialect.identifier_preparer.quote
    name = quote(table.name)
    cols = ", ".join(quote(col) for col in columns)
    tail = (f" {on_conflict}" if on_conflict else "") + (
        " RETURNING " + ", ".join(quote(col) for col in returning) if returning else ""
    )
    if c.dialect.name == "postgresql":
        arrays = ", ".join(f"${i}::{_pg_array_type(table.c[col])}" for i, col in enumerate(columns, 1))
        sql = f"INSERT INTO {name} ({cols}) SELECT * FROM unnest({arrays}){tail}"
        result = await c.exec_driver_sql(sql, tuple(list(values) for values in zip(*rows, strict=True)))
        return list(result.all()) if returning else []
    one = "(" + ", ".join("?" for _ in columns) + ")"
    if not returning:
        await c.exec_driver_sql(f"INSERT INTO {name} ({cols}) VALUES {one}{tail}", [tuple(r) for r in rows])
        return []
    found: list[Any] = []
    per_statement = max(1, _SQLITE_MAX_PARAMS // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        sql = f"INSERT INTO {name} ({cols}) VALUES {', '.join([one] * len(chunk))}{tail}"
        result = await c.exec_driver_sql(sql, tuple(v for r in chunk for v in r))
        found.extend(result.all())
    return found


async def update_rows(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    where: str = "",
) -> int:
    """Set ``columns`` of the row whose ``key`` column equals each row's first value (rows are ``(key, *values)``),
    in one statement per batch; ``where`` is an extra condition on the table's row, written against its quoted
    name (e.g. ``"holds"."status" = 'open'``). Returns the rows changed where the driver reports it.

    PostgreSQL: ``UPDATE … FROM unnest(…)`` (one round trip); SQLite: ``executemany`` of one prepared UPDATE.
    """
    if not rows:
        return 0
    c = await _connection(conn)
    quote = c.dialect.identifier_preparer.quote
    name = quote(table.name)
    extra = f" AND {where}" if where else ""
    if c.dialect.name == "postgresql":
        names = (key, *columns)
        arrays = ", ".join(f"${i}::{_pg_array_type(table.c[col])}" for i, col in enumerate(names, 1))
        sets = ", ".join(f"{quote(col)} = u.{quote(col)}" for col in columns)
        sql = (f"UPDATE {name} SET {sets} FROM unnest({arrays}) AS u({', '.join(quote(n) for n in names)}) "
               f"WHERE {name}.{quote(key)} = u.{quote(key)}{extra}")
        result = await c.exec_driver_sql(sql, tuple(list(values) for values in zip(*rows, strict=True)))
        return int(result.rowcount)  # type: ignore[attr-defined]
    sets = ", ".join(f"{quote(col)} = ?" for col in columns)
    sql = f"UPDATE {name} SET {sets} WHERE {quote(key)} = ?{extra}"
    result = await c.exec_driver_sql(sql, [(*r[1:], r[0]) for r in rows])
    return max(0, int(result.rowcount))  # type: ignore[attr-defined]


async def select_rows(
    conn: AsyncConnection | AsyncSession,
    table: Table,
    key: str,
    columns: Sequence[str],
    keys: Sequence[Any],
    *,
    for_update: bool = False,
) -> list[Any]:
    """``columns`` of the rows whose ``key`` is in ``keys`` (ordered by ``key``; ``for_update`` locks them on
    PostgreSQL). Plain SQL: SQLAlchemy's expanding ``IN`` costs tens of µs per value to bind."""
    if not keys:
        return []
    c = await _connection(conn)
    quote = c.dialect.identifier_preparer.quote
    name = quote(table.name)
    cols = ", ".join(quote(col) for col in columns)
    k = quote(key)
    if c.dialect.name == "postgresql":
        lock = " FOR UPDATE" if for_update else ""
        sql = f"SELECT {cols} FROM {name} WHERE {k} = ANY($1::{_pg_array_type(table.c[key])}) ORDER BY {k}{lock}"
        return list((await c.exec_driver_sql(sql, (list(keys),))).all())
    found: list[Any] = []
    per_statement = 500
    for start in range(0, len(keys), per_statement):
        chunk = tuple(keys[start : start + per_statement])
        sql = f"SELECT {cols} FROM {name} WHERE {k} IN ({', '.join('?' * len(chunk))}) ORDER BY {k}"
        found.extend((await c.exec_driver_sql(sql, chunk)).all())
    return found


async def where_id_in(
    conn: AsyncConnection | AsyncSession, statement: str, table: Table, column: str, ids: Sequence[int]
) -> None:
    """Run ``statement`` (``UPDATE t SET … `` or ``DELETE FROM t``, as written, with no bound parameter) for the rows
    whose integer ``column`` is in ``ids``: one statement on PostgreSQL (``= ANY($1::int8[])``), one
    ``executemany`` on SQLite. What the outbox relay runs after each published batch: SQLAlchemy's expanding
    ``IN`` would compile and bind one parameter per id."""
    if not ids:
        return
    c = await _connection(conn)
    col = c.dialect.identifier_preparer.quote(table.c[column].name)
    if c.dialect.name == "postgresql":
        await c.exec_driver_sql(f"{statement} WHERE {col} = ANY($1::int8[])", (list(ids),))
        return
    await c.exec_driver_sql(f"{statement} WHERE {col} = ?", [(i,) for i in ids])
