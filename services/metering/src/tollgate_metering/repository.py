"""Persistence for metering: price-book versions, rated usage, aggregates and the event archive.

Every method runs inside the caller's transaction (the consumer's batch, a rebuild batch, a command), so a usage
event's rating, aggregates, archive entry, outbox row and consumer offset commit together or not at all. Writes are
set-based (one statement per table per batch) because a rebuild pushes hundreds of thousands of events through here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from tollgate_common.db import create_engine
from tollgate_common.events import Envelope
from tollgate_common.migrations import migrate

from .domain import ArchivedEvent, PriceBook, RatedUsage
from .tables import aggregates, archive, archive_heads, messaging, price_books, rated_usage

__all__ = ["AGGREGATE_KEY", "AGGREGATE_SUMS", "MeteringRepository", "StoredPriceBook", "SummaryRow", "open_database"]

AGGREGATE_KEY = ("account_id", "key_id", "model", "day", "team", "project", "currency")
AGGREGATE_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "upstream_cost_nanos",
    "resale_price_nanos",
)
_IN_CHUNK = 500  # bound the number of bind parameters per IN (...) list


@dataclass(frozen=True, slots=True)
class StoredPriceBook:
    book: PriceBook
    content_sha256: str


@dataclass(frozen=True, slots=True)
class SummaryRow:
    key_id: str
    model: str
    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    upstream_cost_nanos: int
    resale_price_nanos: int


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def rated_row(rated: RatedUsage, event_source: str) -> dict[str, Any]:
    r, g = rated.record, rated.rating
    return {
        "request_id": r.request_id,
        "event_source": event_source,
        "account_id": r.account_id,
        "key_id": r.key_id,
        "hold_id": r.hold_id,
        "model": r.model,
        "provider": r.provider,
        "upstream_model": r.upstream_model,
        "upstream_request_id": r.upstream_request_id,
        "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens,
        "total_tokens": r.total_tokens,
        "cached_prompt_tokens": r.usage.cached_prompt_tokens,
        "reasoning_tokens": r.usage.reasoning_tokens,
        "outcome": r.outcome,
        "streamed": r.streamed,
        "team": r.team,
        "project": r.project,
        "tags": json.dumps(dict(sorted(r.tags.items())), separators=(",", ":")),
        "occurred_at_unix_ms": r.occurred_at_unix_ms,
        "rated_at_unix_ms": rated.rated_at_unix_ms,
        "currency": g.currency,
        "exchange_rate": "",
        "price_book_version": g.price_book_version,
        "markup_bps": g.markup_bps,
        "input_price_nanos": g.input_price_nanos,
        "output_price_nanos": g.output_price_nanos,
        "upstream_cost_nanos": g.upstream_cost_nanos,
        "resale_price_nanos": g.resale_price_nanos,
        "priced": g.priced,
    }


def aggregate_deltas(rated: Iterable[RatedUsage]) -> list[dict[str, Any]]:
    """Sum a batch in memory first: one upsert per aggregate row instead of one per event."""
    sums: dict[tuple[str, ...], list[int]] = {}
    for item in rated:
        r, g = item.record, item.rating
        key = (r.account_id, r.key_id, r.model, item.day, r.team, r.project, g.currency)
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [0] * len(AGGREGATE_SUMS)
        acc[0] += 1
        acc[1] += r.usage.prompt_tokens
        acc[2] += r.usage.completion_tokens
        acc[3] += r.usage.cached_prompt_tokens
        acc[4] += r.usage.reasoning_tokens
        acc[5] += g.upstream_cost_nanos
        acc[6] += g.resale_price_nanos
    return [
        dict(zip(AGGREGATE_KEY, key, strict=True)) | dict(zip(AGGREGATE_SUMS, acc, strict=True))
        for key, acc in sums.items()
    ]


class MeteringRepository:
    """Metering's tables behind one small interface; ``session`` belongs to the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _insert(self, table: Table) -> Any:
        """The dialect's INSERT, for ON CONFLICT (SQLite and PostgreSQL spell it the same way)."""
        dialect = self.session.get_bind().dialect.name
        return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)

    # --- price books --------------------------------------------------------------------------------------------
    async def price_books(self) -> list[StoredPriceBook]:
        """Every stored version, in load order."""
        rows = await self.session.execute(
            select(price_books.c.content, price_books.c.content_sha256).order_by(price_books.c.id)
        )
        return [StoredPriceBook(PriceBook.from_content(json.loads(r.content)), r.content_sha256) for r in rows]

    async def price_book_sha(self, version: str) -> str | None:
        row = await self.session.execute(
            select(price_books.c.content_sha256).where(price_books.c.version == version)
        )
        return row.scalar_one_or_none()

    async def add_price_book(self, book: PriceBook, loaded_at_unix_ms: int) -> None:
        await self.session.execute(
            insert(price_books).values(
                version=book.version,
                content_sha256=book.content_sha256(),
                content=book.canonical_json(),
                currency=book.currency,
                markup_bps=book.markup_bps,
                effective_from_unix_ms=book.effective_from_unix_ms,
                loaded_at_unix_ms=loaded_at_unix_ms,
            )
        )

    # --- messaging (tollgate_common's bulk forms on metering's tables) -------------------------------------------
    async def mark_processed(self, keys: Sequence[tuple[str, str]]) -> list[bool]:
        """Record each (source, id); for each key, True if it is new (seen neither before nor earlier in ``keys``)."""
        return await messaging.mark_processed(self.session, keys)

    async def add_to_outbox(self, topic: str, events: Sequence[Envelope]) -> None:
        """Queue ``events`` for publishing on ``topic``, keyed by subject (the account), in one statement."""
        await messaging.add_many_to_outbox(self.session, topic, events)

    # --- rated usage and aggregates -----------------------------------------------------------------------------
    async def rated_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(set(request_ids))):
            rows = await self.session.execute(
                select(rated_usage.c.request_id).where(rated_usage.c.request_id.in_(chunk))
            )
            found.update(rows.scalars())
        return found

    async def add_rated(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(rated_usage), list(rows))

    async def add_to_aggregates(self, deltas: Sequence[Mapping[str, Any]]) -> None:
        """Upsert: insert new aggregate rows, add to existing ones (one statement, both dialects)."""
        if not deltas:
            return
        stmt = self._insert(aggregates)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(AGGREGATE_KEY),
            set_={name: aggregates.c[name] + stmt.excluded[name] for name in AGGREGATE_SUMS},
        )
        await self.session.execute(stmt, list(deltas))

    async def usage_summary(self, account_id: str) -> list[SummaryRow]:
        a = aggregates.c
        rows = await self.session.execute(
            select(
                a.key_id,
                a.model,
                a.currency,
                func.sum(a.requests).label("requests"),
                func.sum(a.prompt_tokens).label("prompt_tokens"),
                func.sum(a.completion_tokens).label("completion_tokens"),
                func.sum(a.upstream_cost_nanos).label("upstream_cost_nanos"),
                func.sum(a.resale_price_nanos).label("resale_price_nanos"),
            )
            .where(a.account_id == account_id)
            .group_by(a.key_id, a.model, a.currency)
            .order_by(a.key_id, a.model, a.currency)
        )
        return [
            SummaryRow(
                key_id=r.key_id,
                model=r.model,
                currency=r.currency,
                requests=int(r.requests),
                prompt_tokens=int(r.prompt_tokens),
                completion_tokens=int(r.completion_tokens),
                upstream_cost_nanos=int(r.upstream_cost_nanos),
                resale_price_nanos=int(r.resale_price_nanos),
            )
            for r in rows
        ]

    # --- archive ------------------------------------------------------------------------------------------------
    async def archive_heads(self, account_ids: Iterable[str]) -> dict[str, tuple[int, str]]:
        heads: dict[str, tuple[int, str]] = {}
        h = archive_heads.c
        for chunk in _chunks(sorted(set(account_ids))):
            rows = await self.session.execute(
                select(h.account_id, h.last_seq, h.last_hash).where(h.account_id.in_(chunk))
            )
            heads.update({r.account_id: (int(r.last_seq), r.last_hash) for r in rows})
        return heads

    async def append_archive(self, events: Sequence[ArchivedEvent], archived_at_unix_ms: int) -> None:
        """Insert chained events and move each account's head to its last one."""
        if not events:
            return
        await self.session.execute(
            insert(archive),
            [
                {
                    "account_id": e.account_id,
                    "seq": e.seq,
                    "event_id": e.event_id,
                    "event_type": e.event_type,
                    "source": e.source,
                    "subject": e.subject,
                    "event_time": e.event_time,
                    "data": e.data,
                    "prev_hash": e.prev_hash,
                    "hash": e.hash,
                    "archived_at_unix_ms": archived_at_unix_ms,
                }
                for e in events
            ],
        )
        last: dict[str, ArchivedEvent] = {}
        for e in events:
            last[e.account_id] = e
        stmt = self._insert(archive_heads)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id"],
            set_={"last_seq": stmt.excluded.last_seq, "last_hash": stmt.excluded.last_hash},
        )
        await self.session.execute(
            stmt, [{"account_id": a, "last_seq": e.seq, "last_hash": e.hash} for a, e in last.items()]
        )

    async def archived_accounts(self) -> list[str]:
        """Accounts with archived events or a recorded head (a head without events means they were deleted)."""
        rows = await self.session.execute(
            select(archive.c.account_id).union(select(archive_heads.c.account_id))
        )
        return sorted(rows.scalars())

    async def archived_events(self, account_id: str) -> AsyncIterator[ArchivedEvent]:
        """One account's archive in seq order, streamed (an account's history can be long)."""
        c = archive.c
        result = await self.session.stream(
            select(c.account_id, c.seq, c.event_id, c.event_type, c.source, c.subject, c.event_time, c.data,
                   c.prev_hash, c.hash)
            .where(c.account_id == account_id)
            .order_by(c.seq)
        )
        async for r in result:
            yield ArchivedEvent(r.account_id, int(r.seq), r.event_id, r.event_type, r.source, r.subject,
                                r.event_time, bytes(r.data), r.prev_hash, r.hash)


async def open_database(url: str, schema: str) -> AsyncEngine:
    """An engine on metering's database, migrated to the newest schema (on PostgreSQL inside ``schema``)."""
    engine = create_engine(url, schema=schema)
    await migrate(engine, "tollgate_metering", schema=schema)
    return engine
