"""Persistence for metering: price-book versions, rated usage, aggregates and the event archive.

Every method runs inside the caller's transaction (the consumer's batch, a rebuild batch, a command), so a usage
event's rating, aggregates, archive entry, outbox row and consumer offset commit together or not at all. Writes are
set-based (one statement per table per batch) because a rebuild pushes hundreds of thousands of events through here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from tollgate_common.bulk import insert_rows
from tollgate_common.events import Envelope
from tollgate_common.migrations import open_database as _open_database

from .domain import ArchivedEvent, PriceBook, RatedUsage
from .tables import aggregates, archive, archive_heads, messaging, price_books, rated_usage
from .usage_report import UsageFact

__all__ = [
    "AGGREGATE_KEY",
    "AGGREGATE_SUMS",
    "RATED_COLUMNS",
    "MeteringRepository",
    "StoredPriceBook",
    "SummaryRow",
    "open_database",
]

AGGREGATE_KEY = ("account_id", "key_id", "model", "day", "team", "project", "currency")
AGGREGATE_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "upstream_cost_nanos",
    "resale_price_nanos",
    "cache_write_tokens",
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


#: ``rated_usage`` columns in the order :func:`rated_row` gives them.
RATED_COLUMNS = (
    "request_id", "event_source", "account_id", "key_id", "hold_id", "model", "provider", "upstream_model",
    "upstream_request_id", "prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens",
    "reasoning_tokens", "outcome", "streamed", "team", "project", "tags", "occurred_at_unix_ms", "rated_at_unix_ms",
    "currency", "exchange_rate", "price_book_version", "markup_bps", "input_price_nanos", "output_price_nanos",
    "upstream_cost_nanos", "resale_price_nanos", "priced", "cache_write_tokens", "cached_input_price_nanos",
    "cache_write_price_nanos", "reasoning_price_nanos",
)


def rated_row(rated: RatedUsage, event_source: str) -> tuple[Any, ...]:
    """One ``rated_usage`` row, in :data:`RATED_COLUMNS` order."""
    r, g, u = rated.record, rated.rating, rated.record.usage
    tags = json.dumps(r.tags, sort_keys=True, separators=(",", ":")) if r.tags else "{}"
    return (
        r.request_id, event_source, r.account_id, r.key_id, r.hold_id, r.model, r.provider, r.upstream_model,
        r.upstream_request_id, u.prompt_tokens, u.completion_tokens, r.total_tokens, u.cached_prompt_tokens,
        u.reasoning_tokens, r.outcome, r.streamed, r.team, r.project, tags, r.occurred_at_unix_ms,
        rated.rated_at_unix_ms, g.currency, "", g.price_book_version, g.markup_bps, g.input_price_nanos,
        g.output_price_nanos, g.upstream_cost_nanos, g.resale_price_nanos, g.priced, u.cache_write_tokens,
        g.cached_input_price_nanos, g.cache_write_price_nanos, g.reasoning_price_nanos,
    )


def aggregate_deltas(rated: Iterable[RatedUsage]) -> list[tuple[Any, ...]]:
    """Sum a batch in memory first: one upsert row per aggregate key instead of one per event. Rows are
    ``AGGREGATE_KEY + AGGREGATE_SUMS`` in order."""
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
        acc[7] += r.usage.cache_write_tokens
    return [(*key, *acc) for key, acc in sums.items()]


_ADD_TO_AGGREGATES = (
    f"ON CONFLICT ({', '.join(AGGREGATE_KEY)}) DO UPDATE SET "
    + ", ".join(f"{name} = {aggregates.name}.{name} + excluded.{name}" for name in AGGREGATE_SUMS)
)
_ARCHIVE_COLUMNS = ("account_id", "seq", "event_id", "event_type", "source", "subject", "event_time", "data",
                    "prev_hash", "hash", "archived_at_unix_ms")


class MeteringRepository:
    """Metering's tables behind one small interface; ``session`` belongs to the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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

    async def add_rated(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert rated rows (tuples from :func:`rated_row`) in one statement."""
        await insert_rows(self.session, rated_usage, RATED_COLUMNS, rows)

    async def add_to_aggregates(self, deltas: Sequence[Sequence[Any]]) -> None:
        """Upsert (rows from :func:`aggregate_deltas`): insert new aggregate rows, add to existing ones, in one
        statement (both dialects spell the upsert the same)."""
        await insert_rows(self.session, aggregates, (*AGGREGATE_KEY, *AGGREGATE_SUMS), deltas,
                          on_conflict=_ADD_TO_AGGREGATES)

    async def usage_facts(
        self, account_id: str, key_id: str, from_unix_ms: int, to_unix_ms: int
    ) -> AsyncIterator[UsageFact]:
        """The rated requests of one account (one key when ``key_id``) with ``from <= occurred_at < to``."""
        c = rated_usage.c
        query = select(
            c.occurred_at_unix_ms, c.model, c.key_id, c.team, c.project, c.tags, c.currency, c.prompt_tokens,
            c.cached_prompt_tokens, c.cache_write_tokens, c.completion_tokens, c.reasoning_tokens,
            c.upstream_cost_nanos, c.resale_price_nanos,
        ).where(c.account_id == account_id, c.occurred_at_unix_ms >= from_unix_ms, c.occurred_at_unix_ms < to_unix_ms)
        if key_id:
            query = query.where(c.key_id == key_id)
        result = await self.session.stream(query.execution_options(yield_per=5000))
        async for row in result:
            yield UsageFact._make(row)

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
        """Insert chained events and move each account's head to its last one (one statement each)."""
        if not events:
            return
        await insert_rows(self.session, archive, _ARCHIVE_COLUMNS, [
            (e.account_id, e.seq, e.event_id, e.event_type, e.source, e.subject, e.event_time, e.data, e.prev_hash,
             e.hash, archived_at_unix_ms)
            for e in events
        ])
        last: dict[str, ArchivedEvent] = {}
        for e in events:
            last[e.account_id] = e
        await insert_rows(
            self.session, archive_heads, ("account_id", "last_seq", "last_hash"),
            [(a, e.seq, e.hash) for a, e in last.items()],
            on_conflict="ON CONFLICT (account_id) DO UPDATE SET last_seq = excluded.last_seq, "
                        "last_hash = excluded.last_hash",
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
    return await _open_database(url, "tollgate_metering", schema=schema)
