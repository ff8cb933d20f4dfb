"""Metering's commands and queries: the one place that orchestrates the domain and the repository.

``record_usage`` is THE projection: the live consumer and the rebuild both call it, so a rebuilt database can only
differ from the live one if the inputs differ (or someone edited the live one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.telemetry import extract_traceparent, spans_exported

from .domain import (
    ChainProblem,
    PriceBook,
    RatedUsage,
    UsageRecord,
    chain_from,
    effective_book,
    rate,
    unix_ms_to_iso,
    verify_chain,
)
from .errors import InvalidRequest, InvalidUsage, PriceBookConflict, PriceBookError
from .messages import usage_rated_message, usage_record
from .metrics import FIELDS_SHORTENED
from .repository import MeteringRepository, SummaryRow, aggregate_deltas, rated_row
from .usage_report import ReportRow, parse_group_by, report_page
from .validation import ARCHIVE_ACCOUNT_LENGTH, envelope_problem, shorten_fields, usage_problem

__all__ = ["SERVICE", "USAGE_RECORDED", "Metering", "RecordedBatch"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tollgate_metering")

SERVICE = "metering"
USAGE_RECORDED = "tollgate.usage.v1.usage.recorded"
#: A UsageRecorded metering built from the router's attempts when ingress's never came (reconciler.py).
USAGE_RECONCILED = "tollgate.usage.v1.usage.reconciled"
USAGE_RATED = "tollgate.usage.v1.usage.rated"
RATED_SOURCE = f"//tollgate/{SERVICE}"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """What one call to :meth:`Metering.record_usage` did (for metrics and tests)."""

    rated: list[RatedUsage]
    archived: int
    skipped: int
    #: Events that cannot be rated as they are, with the reason (the live consumer parks them).
    refused: list[tuple[Envelope, str]] = field(default_factory=list)


class Metering:
    """Price books, rating and usage queries over one database.

    Price-book versions are few and immutable, so they are held in memory (load order kept) after
    :meth:`load_price_books`; rating an event then needs no query for prices.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], int] = _now_ms) -> None:
        self.sessions = sessions
        self.clock = clock
        self.books: list[PriceBook] = []
        self._books_loaded_at = 0.0
        self._write_turn = asyncio.Lock()

    def write_turn(self) -> asyncio.Lock:
        """The one queue for this process's batch writers (the consumer's transactions, the relay's deletes):
        taken around each, so on SQLite they wait here in turn instead of colliding on the write lock, whose busy
        handler sleeps between tries (measured: the relay's deletes cut the consumer's pace several times)."""
        return self._write_turn

    # --- price books --------------------------------------------------------------------------------------------
    async def load_price_books(self, session: AsyncSession | None = None) -> None:
        """Read every version; in ``session`` when given (the caller's transaction), else in a session of its own."""
        if session is None:
            async with self.sessions() as own:
                stored = await MeteringRepository(own).price_books()
        else:
            stored = await MeteringRepository(session).price_books()
        self.books = [s.book for s in stored]
        self._books_loaded_at = time.monotonic()

    async def refresh_price_books(self, max_age_seconds: float, session: AsyncSession | None = None) -> None:
        """Re-read the versions when the copy in memory is older than ``max_age_seconds``: another replica on the
        same database may have recorded a new version at its start."""
        if time.monotonic() - self._books_loaded_at > max_age_seconds:
            await self.load_price_books(session)

    async def register_price_book(self, book: PriceBook) -> bool:
        """Store ``book`` as a version. True if it was new; the same content again is a no-op; different content
        under an existing version raises :class:`PriceBookConflict` (rated rows name versions: a version must
        never change its meaning)."""
        async with self.sessions.begin() as session:
            repo = MeteringRepository(session)
            stored = await repo.price_book_sha(book.version)
            if stored == book.content_sha256():
                added = False
            elif stored is not None:
                raise PriceBookConflict(
                    f"price book version {book.version!r} is already stored with different content; "
                    "give the changed book a new version"
                )
            else:
                await repo.add_price_book(book, self.clock())
                added = True
        await self.load_price_books()
        return added

    def current_price_book(self) -> PriceBook:
        if not self.books:
            raise PriceBookError("no price book is loaded")
        return effective_book(self.books, self.clock())

    def price_book_at(self, unix_ms: int) -> PriceBook:
        return effective_book(self.books, unix_ms)

    # --- the projection -----------------------------------------------------------------------------------------
    async def record_usage(
        self, session: AsyncSession, events: Sequence[Envelope], *, publish: bool
    ) -> RecordedBatch:
        """Rate, store, aggregate and archive already-deduplicated usage events inside the caller's transaction;
        with ``publish`` also write each ``UsageRated`` to the outbox (never in a rebuild).

        A fixed number of plain-SQL statements per batch, whatever its size (one per table: the rated rows, the
        aggregates summed in memory first, the archive and its heads, the outbox). Events that cannot be stored
        as they are (:mod:`.validation`) are archived and returned in ``refused`` with a reason, never rated."""
        repo = MeteringRepository(session)
        now = self.clock()
        to_archive: dict[str, list[tuple[str, str, str, str, str, bytes]]] = {}
        decoded: list[tuple[Envelope, UsageRecord]] = []
        refused: list[tuple[Envelope, str]] = []
        for env in events:
            account = env.subject
            if env.type in (USAGE_RECORDED, USAGE_RECONCILED):
                problem = None
                try:
                    msg = usage_pb2.UsageRecorded.FromString(env.data)
                except DecodeError:
                    problem = "the payload is not a UsageRecorded"
                else:
                    if 0 < len(msg.account_id) <= ARCHIVE_ACCOUNT_LENGTH:
                        account = msg.account_id
                    problem = usage_problem(msg)
                    if problem is None:
                        shortened = shorten_fields(msg)
                        if shortened:
                            log.warning("usage event strings shortened to fit; rated, the archive keeps them whole",
                                        extra={"event_id": env.id, "fields": ",".join(shortened)})
                            FIELDS_SHORTENED.inc(len(shortened))
                        decoded.append((env, usage_record(msg)))
                if problem is not None:
                    refused.append((env, problem))
                    log.error("usage event refused; archived, not rated",
                              extra={"event_id": env.id, "event_source": env.source, "reason": problem})
            else:
                log.warning("event type metering does not rate; archived only",
                            extra={"event_id": env.id, "event_type": env.type})
            to_archive.setdefault(account, []).append((env.id, env.type, env.source, env.subject, env.time, env.data))

        done = await repo.rated_request_ids([r.request_id for _, r in decoded])
        rated: list[tuple[Envelope, RatedUsage]] = []
        for env, record in decoded:
            if record.request_id in done:
                log.warning("request already rated under another event id; not rated again",
                            extra={"request_id": record.request_id, "account_id": record.account_id,
                                   "event_id": env.id})
                continue
            done.add(record.request_id)
            book = self.price_book_at(record.occurred_at_unix_ms)
            try:
                rating = rate(book, record.model, record.usage)
            except InvalidUsage as exc:
                refused.append((env, str(exc)))
                log.error("usage event cannot be rated; archived, not rated",
                          extra={"request_id": record.request_id, "event_id": env.id, "reason": str(exc)})
                continue
            if not rating.priced:
                log.error(
                    "model missing from the price book; rated at zero and marked unpriced",
                    extra={"request_id": record.request_id, "account_id": record.account_id, "event_id": env.id,
                           "model": record.model, "price_book_version": book.version},
                )
            rated.append((env, RatedUsage(record, rating, now)))

        await repo.add_rated([rated_row(r, env.source) for env, r in rated])
        await repo.add_to_aggregates(aggregate_deltas(r for _, r in rated))
        heads = await repo.archive_heads(to_archive)
        chained = [ev for acct, items in to_archive.items() for ev in chain_from(acct, heads.get(acct), items)]
        await repo.append_archive(chained, now)
        if publish and rated:
            await repo.add_to_outbox(Topics.USAGE_RATED, self._rated_envelopes(rated, now))
        return RecordedBatch(rated=[r for _, r in rated], archived=len(chained),
                             skipped=len(events) - len(rated), refused=refused)

    @staticmethod
    def _rated_envelopes(rated: Sequence[tuple[Envelope, RatedUsage]], now: int) -> list[Envelope]:
        """The ``UsageRated`` events of a batch. Each continues the trace of the ``UsageRecorded`` it rates: with a
        collector, under a producer span of its own; without one, by carrying the incoming ``traceparent`` as it
        came (a span per event that nobody exports costs more than rating it)."""
        if spans_exported():
            out = []
            for env, r in rated:
                with _tracer.start_as_current_span(
                    "metering publish usage.rated", context=extract_traceparent(env.traceparent),
                    kind=trace.SpanKind.PRODUCER,
                ):
                    out.append(envelope_for(usage_rated_message(r), id=r.record.request_id, service=SERVICE,
                                            subject=r.record.account_id, at_unix_ms=now))
            return out
        stamp = unix_ms_to_iso(now)
        return [Envelope(id=r.record.request_id, source=RATED_SOURCE, type=USAGE_RATED, subject=r.record.account_id,
                         time=stamp, data=usage_rated_message(r).SerializeToString(), traceparent=env.traceparent)
                for env, r in rated]

    async def replay_usage(self, events: Sequence[Envelope]) -> RecordedBatch:
        """The rebuild's path, in one transaction: dedupe on (source, id), then :meth:`record_usage` without
        publishing. (The live consumer's base class does that dedupe itself before handing a batch over.)"""
        usable = []
        for env in events:
            problem = envelope_problem(env)
            if problem is None:
                usable.append(env)
            else:  # the live consumer parks these before its dedupe (``UsageConsumer.decode``)
                log.error("event refused; not archived", extra={"event_id": env.id[:200], "reason": problem})
        events = usable
        async with self.sessions.begin() as session:
            fresh = await MeteringRepository(session).mark_processed([(e.source, e.id) for e in events])
            return await self.record_usage(
                session, [e for e, new in zip(events, fresh, strict=True) if new], publish=False
            )

    # --- queries ------------------------------------------------------------------------------------------------
    async def usage_summary(self, account_id: str) -> list[SummaryRow]:
        if not account_id:
            raise InvalidRequest("account_id is required")
        async with self.sessions() as session:
            return await MeteringRepository(session).usage_summary(account_id)

    async def usage_report(
        self, account_id: str, key_id: str, from_unix_ms: int, to_unix_ms: int, group_by: Sequence[str],
        page_size: int = 0, page_token: str = "",
    ) -> tuple[list[ReportRow], str]:
        """One page of the usage report (:mod:`tollgate_metering.usage_report`) and the next page's token."""
        if not account_id:
            raise InvalidRequest("account_id is required")
        if not 0 <= from_unix_ms < to_unix_ms:
            raise InvalidRequest("the window must have 0 <= from < to")
        parse_group_by(group_by)  # refuse a bad grouping before reading anything
        async with self.sessions() as session:
            facts = [f async for f in MeteringRepository(session).usage_facts(account_id, key_id, from_unix_ms,
                                                                             to_unix_ms)]
        return report_page(facts, group_by, page_size, page_token)

    async def verify_archive(self, account_id: str | None = None) -> list[ChainProblem]:
        """Recompute every hash of one account's chain (or all accounts'); an empty list means intact."""
        problems: list[ChainProblem] = []
        async with self.sessions() as session:
            repo = MeteringRepository(session)
            accounts = [account_id] if account_id is not None else await repo.archived_accounts()
            heads = await repo.archive_heads(accounts)
            for account in accounts:
                events = [e async for e in repo.archived_events(account)]
                problems.extend(verify_chain(account, events, heads.get(account)))
        return problems
