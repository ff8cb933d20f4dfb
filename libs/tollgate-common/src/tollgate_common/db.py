"""Database plumbing shared by every service: async engines and the tables every service needs for messaging.

Each service owns its own database (and, on PostgreSQL, its own schema); nobody reads another service's tables.
The tables here are plumbing, defined per service on that service's own ``MetaData``:

- ``outbox``: events written in the same transaction as the state change that caused them, published later.
- ``processed_events``: (source, id) of every consumed event, for dedupe.
- ``consumer_offsets``: the next Kafka offset per partition, stored in the same transaction as the effect.
- ``parked_events`` (consumers only): records that could not be applied, where they were and why — never the
  payload — so one bad record does not stop its partition and an operator can find it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from .bulk import insert_rows
from .events import Envelope
from .sqlite_driver import one_hop_aiosqlite

__all__ = [
    "PARKED_COLUMNS",
    "READ_ONLY",
    "MessagingTables",
    "create_engine",
    "create_schema",
    "is_postgres",
    "messaging_tables",
    "normalize_url",
    "session_maker",
]


def normalize_url(url: str) -> str:
    """Accept plain ``sqlite:///…`` / ``postgresql://…`` URLs and pick the async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


#: Execution options for a connection that only reads: on SQLite its transactions open with a plain (deferred)
#: ``BEGIN``, which in WAL mode reads a snapshot without taking the write lock, so a read never queues behind (nor
#: blocks) a writer. Use as ``await conn.execution_options(**READ_ONLY)`` or
#: ``await session.connection(execution_options=READ_ONLY)`` before the first statement. Writing on such a
#: connection is a bug: the upgrade to a write lock can fail with "database is locked" instead of queueing.
READ_ONLY: dict[str, Any] = {"tollgate_read_only": True}


def create_engine(url: str, *, schema: str | None = None, pool_size: int = 10) -> AsyncEngine:
    """An async engine; SQLite gets WAL and ``BEGIN IMMEDIATE`` so concurrent writers queue instead of deadlocking
    (connections marked :data:`READ_ONLY` get a deferred ``BEGIN``: readers never need the write lock).

    On PostgreSQL ``schema`` becomes the connection's ``search_path`` (one schema per service).
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, module=one_hop_aiosqlite())

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            read_only = conn.get_execution_options().get("tollgate_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    connect_args: dict[str, Any] = {}
    if schema and parsed.drivername.startswith("postgresql"):
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args)


async def create_schema(engine: AsyncEngine, metadata: MetaData, *, schema: str | None = None) -> None:
    """Create the service's schema (PostgreSQL) and tables if missing. Idempotent."""
    async with engine.begin() as conn:
        if schema and is_postgres(engine):
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(metadata.create_all)


def session_maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@dataclass(frozen=True)
class MessagingTables:
    outbox: Table
    processed_events: Table
    consumer_offsets: Table
    #: Only in services that consume (``messaging_tables(metadata, consumer=True)``).
    parked_events: Table | None = None

    # --- outbox -------------------------------------------------------------------------------------------------
    async def add_to_outbox(self, conn: AsyncConnection | AsyncSession, topic: str, key: str, env: Envelope) -> None:
        await conn.execute(
            insert(self.outbox).values(
                topic=topic,
                key=key,
                event_id=env.id,
                headers=json.dumps([[k, v.decode()] for k, v in env.headers()]),
                value=env.data,
            )
        )

    # --- consumer side ------------------------------------------------------------------------------------------
    async def seen(self, conn: AsyncConnection | AsyncSession, source: str, event_id: str) -> bool:
        """Record (source, id); True if it was already there (the event is a duplicate)."""
        found = await conn.execute(
            select(self.processed_events.c.event_id).where(
                self.processed_events.c.source == source, self.processed_events.c.event_id == event_id
            )
        )
        if found.first() is not None:
            return True
        await conn.execute(insert(self.processed_events).values(source=source, event_id=event_id))
        return False

    async def mark_processed(
        self, conn: AsyncConnection | AsyncSession, keys: Sequence[tuple[str, str]]
    ) -> list[bool]:
        """Bulk form of :meth:`seen`: record each (source, id); for each key, True if it is new (seen neither
        before nor earlier in ``keys``). One ``INSERT … ON CONFLICT DO NOTHING RETURNING`` per batch: the rows it
        returns are the new ones (PostgreSQL's row locks make two replicas agree on who saw an event first)."""
        unique = list(dict.fromkeys(keys))
        inserted = await insert_rows(conn, self.processed_events, ("source", "event_id"), unique,
                                     on_conflict="ON CONFLICT DO NOTHING", returning=("source", "event_id"))
        new: set[tuple[str, str]] = {(str(r.source), str(r.event_id)) for r in inserted}
        fresh: list[bool] = []
        for key in keys:
            fresh.append(key in new)
            new.discard(key)
        return fresh

    async def add_many_to_outbox(
        self, conn: AsyncConnection | AsyncSession, topic: str, events: Sequence[Envelope]
    ) -> None:
        """Bulk form of :meth:`add_to_outbox` (one plain-SQL statement, rows as tuples); the message key is each
        event's subject."""
        await insert_rows(
            conn, self.outbox, ("topic", "key", "event_id", "headers", "value"),
            [(topic, env.subject, env.id, json.dumps([[k, v.decode()] for k, v in env.headers()]), env.data)
             for env in events],
        )

    async def load_offsets(self, conn: AsyncConnection | AsyncSession, group_id: str) -> dict[tuple[str, int], int]:
        t = self.consumer_offsets
        rows = await conn.execute(select(t.c.topic, t.c.partition, t.c.next_offset).where(t.c.group_id == group_id))
        return {(r.topic, r.partition): r.next_offset for r in rows}

    async def store_offset(
        self, conn: AsyncConnection | AsyncSession, group_id: str, topic: str, partition: int, next_offset: int
    ) -> None:
        await self.store_offsets(conn, group_id, {(topic, partition): next_offset})

    async def store_offsets(
        self, conn: AsyncConnection | AsyncSession, group_id: str, offsets: dict[tuple[str, int], int]
    ) -> None:
        """Upsert the next offset of each (topic, partition), in one statement."""
        await insert_rows(
            conn, self.consumer_offsets, ("group_id", "topic", "partition", "next_offset"),
            [(group_id, topic, partition, offset) for (topic, partition), offset in offsets.items()],
            on_conflict="ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
        )

    async def park(self, conn: AsyncConnection | AsyncSession, rows: Sequence[tuple[Any, ...]]) -> int:
        """Record parked records: (group_id, topic, partition, offset, event_id, event_source, event_type, reason,
        parked_at_unix_ms). A record parked again (read again after a crash or a rebalance) keeps its first row.
        Returns how many were parked for the first time (what the parked counter counts)."""
        if self.parked_events is None:
            raise RuntimeError("these messaging tables have no parked_events table (messaging_tables(consumer=True))")
        new = await insert_rows(conn, self.parked_events, PARKED_COLUMNS, rows, on_conflict="ON CONFLICT DO NOTHING",
                                returning=("offset",))
        return len(new)


PARKED_COLUMNS = ("group_id", "topic", "partition", "offset", "event_id", "event_source", "event_type", "reason",
                  "parked_at_unix_ms")


def messaging_tables(metadata: MetaData, *, consumer: bool = False) -> MessagingTables:
    """The messaging tables on ``metadata``; ``consumer=True`` adds ``parked_events`` (a service that runs a
    :class:`~tollgate_common.kafka.DbOffsetConsumer`)."""
    outbox = Table(
        "outbox",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("event_id", String(200), nullable=False),
        Column("headers", Text, nullable=False),
        Column("value", LargeBinary, nullable=False),
        Column("published_at_unix_ms", BigInteger, nullable=True),
    )
    Index("ix_outbox_unpublished", outbox.c.published_at_unix_ms, outbox.c.id)
    processed = Table(
        "processed_events",
        metadata,
        Column("source", String(200), primary_key=True),
        Column("event_id", String(200), primary_key=True),
    )
    offsets = Table(
        "consumer_offsets",
        metadata,
        Column("group_id", String(200), primary_key=True),
        Column("topic", String(200), primary_key=True),
        Column("partition", Integer, primary_key=True),
        Column("next_offset", BigInteger, nullable=False),
    )
    parked = None
    if consumer:
        parked = Table(
            "parked_events",
            metadata,
            Column("group_id", String(200), primary_key=True),
            Column("topic", String(200), primary_key=True),
            Column("partition", Integer, primary_key=True),
            Column("offset", BigInteger, primary_key=True),
            # What identifies the record (empty when it was not even a CloudEvent); never its payload.
            Column("event_id", String(200), nullable=False),
            Column("event_source", String(200), nullable=False),
            Column("event_type", String(200), nullable=False),
            Column("reason", String(500), nullable=False),
            Column("parked_at_unix_ms", BigInteger, nullable=False),
        )
    return MessagingTables(outbox=outbox, processed_events=processed, consumer_offsets=offsets,
                           parked_events=parked)
