"""Rebuild metering's read models from the log and reconcile them with the live database.

A rebuild replays ``tollgate.usage.v1`` from the beginning into a fresh database through the SAME projection the live
consumer runs (:meth:`Metering.record_usage`, deduplicated on (source, id) the same way), without publishing. Then
rated usage and aggregates are compared row by row with the live database: any difference means the live state
does not follow from the log (a lost or edited row, a bug, a changed price-book version) and must be explained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import ConsumerRecord
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_common.db import create_engine, session_maker
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import RecordCheck, RefusedRecord, replay_topics
from tollgate_common.kafka_security import KafkaSecurity

from .application import Metering
from .domain import PriceBook
from .errors import MeteringError
from .repository import AGGREGATE_KEY, MeteringRepository, open_database
from .tables import aggregates, archive, rated_usage

__all__ = [
    "NotFresh",
    "Progress",
    "RebuildResult",
    "Reconciliation",
    "TableDiff",
    "compare_databases",
    "live_price_books",
    "rebuild",
]

log = logging.getLogger(__name__)

#: Columns that legitimately differ between live and rebuilt rows (when it was rated, not what).
_IGNORED = {"rated_usage": {"rated_at_unix_ms"}}
_SHOW = 20  # rows listed per kind of difference in the report


class NotFresh(MeteringError):
    """The target of a rebuild already holds metering data (refused: it could be the live database)."""

    reason = "rebuild_target_not_empty"


@dataclass(frozen=True)
class RebuildResult:
    events_read: int
    rated: int
    #: Records skipped because their producer is not verified (the live consumer parked the same ones).
    refused: list[RefusedRecord] = field(default_factory=list)


@dataclass
class TableDiff:
    table: str
    live_rows: int
    rebuilt_rows: int
    only_live: list[tuple[Any, ...]] = field(default_factory=list)
    only_rebuilt: list[tuple[Any, ...]] = field(default_factory=list)
    differing: list[tuple[tuple[Any, ...], dict[str, tuple[Any, Any]]]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.only_live or self.only_rebuilt or self.differing)


@dataclass
class Reconciliation:
    tables: list[TableDiff]

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)

    def render(self) -> str:
        lines = ["metering reconciliation: live vs rebuilt from tollgate.usage.v1"]
        for t in self.tables:
            status = "EQUAL" if t.equal else "DIFFERENT"
            lines.append(
                f"  {t.table}: live {t.live_rows} rows, rebuilt {t.rebuilt_rows} rows: {status}"
                + ("" if t.equal else f" ({len(t.only_live)} only live, {len(t.only_rebuilt)} only rebuilt, "
                                      f"{len(t.differing)} differing)")
            )
            for key in t.only_live[:_SHOW]:
                lines.append(f"    only in live:    {_key(key)}")
            for key in t.only_rebuilt[:_SHOW]:
                lines.append(f"    only in rebuilt: {_key(key)}")
            for key, cols in t.differing[:_SHOW]:
                changes = ", ".join(f"{c}: live={a!r} rebuilt={b!r}" for c, (a, b) in sorted(cols.items()))
                lines.append(f"    differs:         {_key(key)}: {changes}")
            hidden = max(0, len(t.only_live) - _SHOW) + max(0, len(t.only_rebuilt) - _SHOW) + max(
                0, len(t.differing) - _SHOW
            )
            if hidden:
                lines.append(f"    … and {hidden} more")
        lines.append("result: " + ("EQUAL" if self.equal else "DIFFERENT"))
        return "\n".join(lines)


def _key(key: tuple[Any, ...]) -> str:
    return "/".join(str(k) for k in key)


async def _ensure_fresh(engine: AsyncEngine) -> None:
    async with session_maker(engine)() as session:
        for table in (rated_usage, aggregates, archive):
            count = (await session.execute(select(func.count()).select_from(table))).scalar_one()
            if count:
                raise NotFresh(
                    f"the rebuild target already has {count} rows in {table.name}; give --into an empty database"
                )


async def live_price_books(url: str, schema: str) -> list[PriceBook]:
    """Every price-book version the live database recorded, in load order: a rebuild must rate with them."""
    engine = create_engine(url, schema=schema)  # read only: no tables created in someone else's database
    try:
        async with session_maker(engine)() as session:
            return [s.book for s in await MeteringRepository(session).price_books()]
    finally:
        await engine.dispose()


Feed = Callable[[Callable[[list[Envelope]], Awaitable[None]]], Awaitable[int]]
#: Told how many events a batch held, after it was applied (progress bars of the ops command).
Progress = Callable[[int], None]


def _no_progress(_: int) -> None:
    return None


async def _rebuild_into(
    into_url: str,
    price_books: Sequence[PriceBook],
    schema: str,
    feed: Feed,
    *,
    fresh_only: bool = True,
    on_progress: Progress = _no_progress,
    refused: list[RefusedRecord] | None = None,
) -> RebuildResult:
    engine = await open_database(into_url, schema)
    try:
        if fresh_only:
            await _ensure_fresh(engine)
        metering = Metering(session_maker(engine))
        for book in price_books:
            await metering.register_price_book(book)
        rated = 0

        async def apply(events: list[Envelope]) -> None:
            nonlocal rated
            rated += len((await metering.replay_usage(events)).rated)
            on_progress(len(events))

        read = await feed(apply)
        return RebuildResult(events_read=read, rated=rated, refused=refused if refused is not None else [])
    finally:
        await engine.dispose()


async def rebuild(
    bootstrap: str,
    into_url: str,
    price_books: Sequence[PriceBook],
    *,
    schema: str = "metering",
    from_offset: int | None = None,
    from_time_ms: int | None = None,
    fresh_only: bool = True,
    on_progress: Progress = _no_progress,
    security: KafkaSecurity | None = None,
    verify: RecordCheck | None = None,
) -> RebuildResult:
    """Replay ``tollgate.usage.v1`` from the beginning (or the given point) into the empty database at ``into_url``.

    ``price_books`` are recorded in order first (the live database's versions, then the configured book), so each
    event is rated with the version that was in force when it happened, as it was live. ``fresh_only=False`` lets
    a caller that checked the target itself (the ops command: an earlier rebuild, never a live database) replay
    onto it again; dedupe on (source, id) makes that a no-op for events already applied. ``security`` and
    ``verify``: the live consumer's Kafka settings and producer check; what ``verify`` refuses is skipped and
    listed in the result's ``refused``.
    """
    refused: list[RefusedRecord] = []

    async def feed(apply: Callable[[list[Envelope]], Awaitable[None]]) -> int:
        async def on_batch(items: list[tuple[Envelope, ConsumerRecord]]) -> None:
            await apply([env for env, _ in items])

        return await replay_topics(bootstrap, [Topics.USAGE], on_batch, from_offset=from_offset,
                                   from_time_ms=from_time_ms, security=security, verify=verify,
                                   on_refused=refused.append)

    return await _rebuild_into(into_url, price_books, schema, feed, fresh_only=fresh_only, on_progress=on_progress,
                               refused=refused)


async def rebuild_from_archive(
    archive_url: str,
    into_url: str,
    price_books: Sequence[PriceBook],
    *,
    schema: str = "metering",
    archive_schema: str = "metering",
    batch: int = 2000,
    fresh_only: bool = True,
    on_progress: Progress = _no_progress,
) -> RebuildResult:
    """Like :func:`rebuild`, but replays the events kept in a metering database's archive (each account's chain in
    seq order) instead of Kafka: for when the broker no longer has the log (the embedded one forgets on restart).
    The rebuilt archive then has the same hashes as the source, event for event."""
    source = create_engine(archive_url, schema=archive_schema)

    async def feed(apply: Callable[[list[Envelope]], Awaitable[None]]) -> int:
        c = archive.c
        read = 0
        pending: list[Envelope] = []
        async with session_maker(source)() as session:
            result = await session.stream(
                select(c.event_id, c.source, c.event_type, c.subject, c.event_time, c.data)
                .order_by(c.account_id, c.seq)
                .execution_options(yield_per=batch)
            )
            async for r in result:
                pending.append(Envelope(id=r.event_id, source=r.source, type=r.event_type, subject=r.subject,
                                        time=r.event_time, data=bytes(r.data)))
                if len(pending) >= batch:
                    await apply(pending)
                    read, pending = read + len(pending), []
        if pending:
            await apply(pending)
            read += len(pending)
        return read

    try:
        return await _rebuild_into(into_url, price_books, schema, feed, fresh_only=fresh_only,
                                   on_progress=on_progress)
    finally:
        await source.dispose()


async def _rows(engine: AsyncEngine, table: Table, key: Sequence[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    ignored = _IGNORED.get(table.name, set())
    columns = [c for c in table.c if c.name not in ignored]
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    async with session_maker(engine)() as session:
        result = await session.stream(select(*columns))
        async for row in result:
            values = dict(row._mapping)
            if "tags" in values:  # JSON text: compare meaning, not spelling
                values["tags"] = json.loads(values["tags"])
            out[tuple(values[k] for k in key)] = values
    return out


def _diff(name: str, live: dict[tuple[Any, ...], dict[str, Any]],
          rebuilt: dict[tuple[Any, ...], dict[str, Any]]) -> TableDiff:
    diff = TableDiff(name, len(live), len(rebuilt))
    diff.only_live = sorted(k for k in live if k not in rebuilt)
    diff.only_rebuilt = sorted(k for k in rebuilt if k not in live)
    for key in sorted(k for k in live if k in rebuilt):
        a, b = live[key], rebuilt[key]
        cols = {c: (a[c], b[c]) for c in a if a[c] != b.get(c)}
        if cols:
            diff.differing.append((key, cols))
    return diff


async def compare_databases(
    live_url: str, rebuilt_url: str, *, live_schema: str = "metering", rebuilt_schema: str = "metering"
) -> Reconciliation:
    """Row-by-row comparison of rated usage (by request id) and aggregates (by their full key)."""
    live = create_engine(live_url, schema=live_schema)
    rebuilt = create_engine(rebuilt_url, schema=rebuilt_schema)
    try:
        tables: list[TableDiff] = []
        for table, key in ((rated_usage, ("request_id",)), (aggregates, AGGREGATE_KEY)):
            tables.append(_diff(table.name, await _rows(live, table, key), await _rows(rebuilt, table, key)))
        return Reconciliation(tables)
    finally:
        await live.dispose()
        await rebuilt.dispose()

