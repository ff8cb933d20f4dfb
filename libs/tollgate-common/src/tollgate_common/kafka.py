"""Kafka plumbing (aiokafka): producer, topic creation, the outbox relay, a consumer that keeps its offsets in the
service's database, and a reader that replays a topic from the beginning for rebuilds.

Correctness never rests on Kafka transactions or the idempotent producer (the embedded broker has neither):
producers may publish twice, consumers dedupe on (source, id) and store offsets with their effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .bulk import where_id_in
from .db import READ_ONLY, MessagingTables
from .event_auth import EventSigner, SigningProducer
from .events import Envelope
from .kafka_security import KafkaSecurity

__all__ = [
    "CONSUMER_LINGER_SECONDS",
    "DIRECT_RETRY_SECONDS",
    "NOTIFIED_POLL_SECONDS",
    "PARKED_EVENTS",
    "PUBLISH_TIMEOUT",
    "AcknowledgedPublisher",
    "BatchApply",
    "BatchHandler",
    "DbOffsetConsumer",
    "OutboxRelay",
    "RecordCheck",
    "RefusedRecord",
    "UnusableRecord",
    "ensure_topics",
    "make_producer",
    "replay_topics",
    "run_with_producer",
]

log = logging.getLogger(__name__)

#: (session, envelope, record) → effect. Runs inside the consumer's transaction; must not commit.
Handler = Callable[[AsyncSession, Envelope, ConsumerRecord], Awaitable[None]]
#: (session, fresh envelopes in partition order) → effect, for a whole Kafka batch at once. Same transaction rules.
#: May return the envelopes it refused, each with a reason: they are parked in the same transaction.
BatchApply = Callable[[AsyncSession, list[Envelope]], Awaitable["Sequence[tuple[Envelope, str]] | None"]]
#: What ``replay_topics`` hands over: a batch of (envelope, record), read-only, no transaction of ours.
BatchHandler = Callable[[list[tuple[Envelope, ConsumerRecord]]], Awaitable[None]]
#: (envelope, raw headers) → None to apply it, or the reason to park it (``event_auth.EventVerifier``).
RecordCheck = Callable[[Envelope, Sequence[tuple[str, bytes]]], str | None]


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """A record a reader of the log did not hand over: not a CloudEvent, or refused by its ``verify`` (a forged or
    foreign-signed event). What identifies it and why, never its payload: it goes into operators' reports."""

    topic: str
    partition: int
    offset: int
    event_id: str
    event_type: str
    source: str
    reason: str

    def describe(self) -> str:
        return (f"{self.topic}[{self.partition}]@{self.offset} event {self.event_id or '?'} "
                f"({self.event_type or '?'} from {self.source or '?'}): {self.reason}")

    def to_json(self) -> dict[str, str | int]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "event_id": self.event_id,
                "type": self.event_type, "source": self.source, "reason": self.reason}


def make_producer(
    bootstrap: str,
    *,
    client_id: str = "tollgate",
    linger_ms: int = 2,
    signer: EventSigner | None = None,
    security: KafkaSecurity | None = None,
) -> AIOKafkaProducer:
    """``signer``: sign every record as that service (``tollgate_common.event_auth``); None or disabled: unsigned.
    ``security``: TLS/SASL settings (``tollgate_common.kafka_security``); None: plaintext."""
    # enable_idempotence stays off: the embedded broker rejects InitProducerId, and consumers dedupe anyway.
    config: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        linger_ms=linger_ms,
        enable_idempotence=False,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
        **_security_kwargs(security),
    )
    if signer is not None and signer.enabled:
        return SigningProducer(signer, **config)
    return AIOKafkaProducer(**config)


def _security_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    return security.client_kwargs() if security is not None else {}


async def run_with_producer(
    bootstrap: str,
    work: Callable[[AIOKafkaProducer], Awaitable[None]],
    *,
    stop: asyncio.Event,
    client_id: str,
    topics: Sequence[str],
    connecting: Callable[[bool], None] | None = None,
    signer: EventSigner | None = None,
    security: KafkaSecurity | None = None,
) -> None:
    """Run ``work(producer)`` until ``stop`` is set, through any number of broker outages.

    Each round creates ``topics`` if missing, starts a fresh producer and hands it to ``work``; when the broker is
    unreachable or ``work`` fails, it logs, waits (0.5 s doubling to 10 s, cut short by ``stop``) and starts again.
    ``connecting(True/False)`` tells the owner whether a round is still connecting (nothing to drain yet, so a
    shutdown may cancel it outright). The producer is always stopped before the next round.
    """
    backoff = 0.5
    while not stop.is_set():
        producer = make_producer(bootstrap, client_id=client_id, signer=signer, security=security)
        try:
            if connecting is not None:
                connecting(True)
            await ensure_topics(bootstrap, topics, attempts=4, security=security)
            await producer.start()
            if connecting is not None:
                connecting(False)
            await work(producer)
            backoff = 0.5
        except Exception as exc:
            if connecting is not None:
                connecting(True)
            log.warning("Kafka unavailable; %s retries", client_id, extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 10.0)
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    attempts: int = 30,
    security: KafkaSecurity | None = None,
) -> None:
    """Create topics that do not exist yet; waits for the broker to answer (up to ``attempts`` × 0.5 s)."""
    last: Exception | None = None
    for _ in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                    **_security_kwargs(security))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                try:
                    await admin.create_topics(
                        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in missing]
                    )
                except TopicAlreadyExistsError:
                    pass
            return
        except (KafkaError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise RuntimeError(f"Kafka at {bootstrap} did not answer: {last!r}")


#: How long an event log waits for Kafka's acknowledgement of a batch before writing it to its outbox instead.
PUBLISH_TIMEOUT = 2.0
#: After a failed publish, batches go to the outbox for this long before Kafka is tried again.
DIRECT_RETRY_SECONDS = 5.0


class AcknowledgedPublisher:
    """An event log's durable path without a database commit: publish a batch to ``topic`` and wait until Kafka
    acknowledged every record (the producer's acks=all). :meth:`publish` answers False when the caller must use
    its outbox instead: no producer is connected (``producer`` is set by the service while it has one), a publish
    failed less than :data:`DIRECT_RETRY_SECONDS` ago, or this one failed or took over :data:`PUBLISH_TIMEOUT`.
    A publish that timed out may still arrive; the outbox copy then duplicates it, which consumers dedupe."""

    def __init__(self, topic: str, *, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.what = what
        self.clock = clock
        self.producer: AIOKafkaProducer | None = None
        self._direct_after = 0.0

    async def publish(self, events: Sequence[Envelope]) -> bool:
        producer = self.producer
        if producer is None or self.clock() < self._direct_after:
            return False
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                sent = [
                    await producer.send(self.topic, value=e.data, key=e.subject.encode(), headers=e.headers())
                    for e in events
                ]
                await asyncio.gather(*sent)
        except Exception as exc:  # broker away, timeout, a rejected record: the outbox is the durable fallback
            self._direct_after = self.clock() + DIRECT_RETRY_SECONDS
            log.warning(f"publishing {self.what} failed; writing them to the outbox", extra={"error": repr(exc)})
            return False
        return True


#: The ``poll_seconds`` of a relay whose every outbox writer calls :meth:`OutboxRelay.notify` after its commit
#: (metering's consumer and reconciler, policy's decision log, the router's attempt log, every billing writer): its
#: poll is only a safety net (rows another replica wrote, a wake-up lost to a crash; rows left from before a restart
#: go out at its start).
#: Measured on an idle stack: policy 5 -> 1 ms of CPU per second, the router 5 -> 0.5-1, metering 12 -> 7.5-8
#: against the 0.5 s default, billing 13 -> 6.5-8.5 (each poll is a session, a select and a rollback).
NOTIFIED_POLL_SECONDS = 5.0


class OutboxRelay:
    """Publishes a service's outbox rows in id order, then marks them published.

    Rows are kept after publishing (``keep=True``): for billing they are its durable event log, which outlives an
    embedded broker that forgets on restart. Publishing twice (crash between send and mark) is harmless.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tables: MessagingTables,
        producer: AIOKafkaProducer,
        *,
        batch: int = 500,
        poll_seconds: float = 0.5,
        keep: bool = True,
        linger_seconds: float = 0.0,
        write_turn: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.tables = tables
        self.producer = producer
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.keep = keep
        #: After a wake-up, wait this long before publishing, so rows committed meanwhile go in the same batch:
        #: under load one select and one mark per batch instead of per request. Publishing latency only.
        self.linger_seconds = linger_seconds
        #: The service's own queue for SQLite writes (e.g. billing's ``sqlite_turn``), taken around the marking
        #: transaction so it queues with the service's other writers instead of colliding with them in SQLite's
        #: busy handler (which sleeps between tries). None: no queue.
        self.write_turn = write_turn
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Call after committing outbox rows to publish them without waiting for the next poll."""
        self._wake.set()

    async def publish_pending(self) -> int:
        t = self.tables.outbox
        async with self.sessions() as session:
            await session.connection(execution_options=READ_ONLY)  # SQLite: a snapshot, not the write lock
            rows = (
                await session.execute(
                    select(t.c.id, t.c.topic, t.c.key, t.c.headers, t.c.value)
                    .where(t.c.published_at_unix_ms.is_(None))
                    .order_by(t.c.id)
                    .limit(self.batch)
                )
            ).all()
        if not rows:
            return 0
        futures = []
        for row in rows:
            headers = [(k, v.encode()) for k, v in json.loads(row.headers)]
            futures.append(await self.producer.send(row.topic, value=row.value, key=row.key.encode(), headers=headers))
        await asyncio.gather(*futures)
        ids = [row.id for row in rows]
        async with contextlib.AsyncExitStack() as stack:
            if self.write_turn is not None:
                await stack.enter_async_context(self.write_turn())
            session = await stack.enter_async_context(self.sessions.begin())
            name = session.get_bind().dialect.identifier_preparer.quote(t.name)
            if self.keep:
                statement = f"UPDATE {name} SET published_at_unix_ms = {int(time.time() * 1000)}"
            else:
                statement = f"DELETE FROM {name}"
            await where_id_in(session, statement, t, "id", ids)
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while True:
            try:
                while await self.publish_pending() == self.batch:
                    pass
                backoff = 0.2
            except Exception as exc:  # broker down or DB busy: keep rows, retry later
                log.warning("outbox publish failed; will retry", extra={"error": repr(exc)})
                backoff = min(backoff * 2, 5.0)
                await asyncio.sleep(backoff)
            if stop.is_set():
                return
            self._wake.clear()
            wake = asyncio.create_task(self._wake.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({wake, stopped}, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            stopped.cancel()
            if self.linger_seconds > 0 and self._wake.is_set() and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.linger_seconds)


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: DbOffsetConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.owner._seek_to_stored(assigned)


#: How long a :class:`DbOffsetConsumer` waits after a poll for more records before applying the batch. Each batch
#: costs a fixed number of statements and a commit (and wakes the outbox relay once), whatever its size; without a
#: wait, a consumer applies whatever one fetch brought (the broker answers a fetch as soon as anything is there).
#: Measured (``bench.cpu``, c=32): metering's batches grew from ~10 to ~18 records. Adds at most this much to the
#: consumer's lag, nothing to any request's latency.
CONSUMER_LINGER_SECONDS = 0.05

#: Records a consumer could not apply and parked (see ``DbOffsetConsumer``); alert on any increase.
PARKED_EVENTS = Counter("tollgate_consumer_parked_events_total", "Records parked because they cannot be applied",
                        ["group"])

#: Errors that say nothing about the record (the database or the network had a moment): retry the batch, never
#: park for them.
_TRANSIENT: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, DisconnectionError, TimeoutError,
                                               ConnectionError, OSError)


class UnusableRecord(ValueError):
    """Raised by :meth:`DbOffsetConsumer.decode` for a record that must not be applied (not a CloudEvent, or one a
    consumer refuses, e.g. from a producer not allowed to write it); the record is parked with this reason."""


def _reason(exc: BaseException) -> str:
    """A short, payload-free reason: the error's class and the first line of the driver's message (SQLAlchemy's
    own text would append the statement's parameters, i.e. the record's values)."""
    inner = getattr(exc, "orig", None) or exc
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {first}"[:300]


Item = tuple[TopicPartition, ConsumerRecord]


class DbOffsetConsumer:
    """Consumes topics in a group, applying each fetched batch in ONE database transaction that also stores the
    offsets and the (source, id) dedupe rows. Kafka's own committed offsets are only a courtesy for lag monitoring.

    Poison records never block a partition. When a batch fails for a reason that may be the data (not a lost
    connection or a busy database), it is bisected — each half applied in its own transaction, in order — down to
    the one record that fails; that record is tried once more, then parked (``parked_events``: topic, partition,
    offset, event id, reason; never the payload) with its offset stored in the same transaction, counted in
    ``tollgate_consumer_parked_events_total``, and the consumer moves past it. Every other record is applied once.
    On a transient error the batch rolls back and is read again after a pause: nothing skipped, nothing doubled.
    A poll that returned records waits ``linger_seconds`` for more before the batch is applied (one transaction for
    what arrived meanwhile too; :data:`CONSUMER_LINGER_SECONDS`).

    Hooks: :meth:`decode` is the one place a record becomes an :class:`Envelope` (verify it there; raise
    :class:`UnusableRecord` to park it); a ``batch_handler`` may return the envelopes it refuses (e.g. a payload
    that does not fit the columns), parked the same way in the batch's own transaction; ``write_turn`` is entered
    around each batch transaction (billing queues its SQLite writers on it); ``after_commit`` runs after each
    committed transaction.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        sessions: async_sessionmaker[AsyncSession],
        tables: MessagingTables,
        handler: Handler | None = None,
        batch_handler: BatchApply | None = None,
        after_commit: Callable[[], None] | None = None,
        write_turn: Callable[[], AbstractAsyncContextManager[object]] | None = None,
        max_records: int = 2000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        retry_pause_seconds: float = 1.0,
        verify: RecordCheck | None = None,
        security: KafkaSecurity | None = None,
        linger_seconds: float = CONSUMER_LINGER_SECONDS,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler (per event) or batch_handler (per Kafka batch)")
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group_id = group_id
        self.sessions = sessions
        self.tables = tables
        self.handler = handler
        self.batch_handler = batch_handler
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.after_commit = after_commit
        self.write_turn = write_turn
        self.max_records = max_records
        self.retry_pause_seconds = retry_pause_seconds
        #: After a poll that returned records (fewer than ``max_records``), wait this long and take what arrived
        #: meanwhile into the same batch (see :data:`CONSUMER_LINGER_SECONDS`). 0: apply each poll as it comes.
        self.linger_seconds = linger_seconds
        #: Producer identity check (``event_auth.EventVerifier``): a record it refuses is parked with its reason.
        self.verify = verify
        self.security = security
        self.consumer: AIOKafkaConsumer | None = None
        self.applied = 0
        self.parked = 0

    def decode(self, record: ConsumerRecord) -> Envelope:
        """The record as an event, or :class:`UnusableRecord`. Override (calling super) to verify more."""
        try:
            env = Envelope.from_kafka(record.headers, record.value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnusableRecord(f"not a Tollgate CloudEvent: {exc}") from None
        refused = self.verify(env, record.headers) if self.verify is not None else None
        if refused is not None:
            raise UnusableRecord(f"producer not verified: {refused}")
        return env

    async def _seek_to_stored(self, assigned: Iterable[TopicPartition]) -> None:
        """Resume where the database says; from the beginning when it knows nothing or the log is shorter than the
        stored offset (a broker that lost its log, like the memory-only embedded one after a restart: it answers
        such a fetch with nothing rather than an out-of-range error). Re-reading is safe: events are deduped."""
        assert self.consumer is not None
        partitions = list(assigned)
        if not partitions:
            return
        async with self.sessions() as session:
            stored = await self.tables.load_offsets(session, self.group_id)
        ends = await self.consumer.end_offsets(partitions)
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None and offset <= ends[tp]:
                self.consumer.seek(tp, offset)
                continue
            if offset is not None:
                # Also reached when Tansu under-reports the end (ListOffsets answers its last record batch's base
                # offset + 1): reading from the beginning then costs time, never correctness.
                log.warning(
                    "stored offset is past the end of the log (the broker lost it?); reading from the beginning",
                    extra={"topic": tp.topic, "partition": tp.partition, "stored_offset": offset, "end": ends[tp]},
                )
            await self.consumer.seek_to_beginning(tp)

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **_security_kwargs(self.security),
        )
        await self.consumer.start()
        try:
            # Subscribing after start() keeps start() quick; the group join happens in the first getmany, which
            # returns every 200 ms, so a stop is seen promptly even while joining.
            self.consumer.subscribe(self.topics, listener=_SeekToStored(self))
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
                if not batches:
                    continue
                batches = await self._linger(batches)
                items = [(tp, record) for tp, records in batches.items() for record in records]
                try:
                    await self.apply_items(items)
                except Exception:
                    log.exception("consumer batch failed; rolling back and reading it again")
                    for tp, records in batches.items():
                        self.consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(self.retry_pause_seconds)
                    continue
                try:
                    await self.consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
                except KafkaError:
                    pass  # the database holds the truth
        finally:
            await self.consumer.stop()

    async def _linger(
        self, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """``batches`` and whatever the fetcher received during :attr:`linger_seconds`, per partition in offset
        order (the records of a second poll follow those of the first)."""
        count = sum(len(records) for records in batches.values())
        if self.linger_seconds <= 0 or count >= self.max_records:
            return batches
        assert self.consumer is not None
        await asyncio.sleep(self.linger_seconds)
        more = await self.consumer.getmany(timeout_ms=0, max_records=self.max_records - count)
        if not more:
            return batches
        merged = {tp: list(records) for tp, records in batches.items()}
        for tp, records in more.items():
            merged.setdefault(tp, []).extend(records)
        return merged

    async def apply_items(self, items: list[Item]) -> None:
        """Apply a fetched batch (per partition in offset order): whole if it can be, else bisected around the
        records that cannot be applied, which are parked. Raises only for transient errors (nothing of this call
        is then lost: what committed stored its offsets, the rest is read again)."""
        try:
            await self._transaction(items)
        except _TRANSIENT:
            raise
        except Exception as exc:
            if len(items) == 1:
                await self._retry_or_park(items[0], exc)
                return
            log.warning("consumer batch failed; applying it in halves to find the record that fails",
                        extra={"records": len(items), "error": _reason(exc)})
            middle = len(items) // 2
            await self.apply_items(items[:middle])
            await self.apply_items(items[middle:])

    async def _retry_or_park(self, item: Item, first: Exception) -> None:
        """One record failed alone: once more (a conflict with another writer does not repeat), then park it."""
        await asyncio.sleep(min(self.retry_pause_seconds, 0.2))
        try:
            await self._transaction([item])
            return
        except _TRANSIENT:
            raise
        except Exception as exc:
            await self._park([(item, exc if str(exc) else first)])

    def _parked_rows(self, failed: list[tuple[Item, BaseException]]) -> list[tuple[Any, ...]]:
        """``parked_events`` rows for failed records (logged; what identifies them and why, never the payload)."""
        rows = []
        now = int(time.time() * 1000)
        for (tp, record), exc in failed:
            env: Envelope | None = None
            with contextlib.suppress(Exception):
                env = Envelope.from_kafka(record.headers, record.value)
            reason = _reason(exc)
            log.error("record cannot be applied; parked, the partition goes on",
                      extra={"group": self.group_id, "topic": tp.topic, "partition": tp.partition,
                             "offset": record.offset, "event_id": env.id if env else "", "reason": reason})
            rows.append((self.group_id, tp.topic, tp.partition, record.offset, (env.id if env else "")[:200],
                         (env.source if env else "")[:200], (env.type if env else "")[:200], reason, now))
        return rows

    def _count_parked(self, n: int) -> None:
        self.parked += n
        PARKED_EVENTS.labels(self.group_id).inc(n)

    async def _park(self, failed: list[tuple[Item, BaseException]]) -> None:
        """Park records in a transaction of their own that also moves the offsets past them."""
        if self.tables.parked_events is None:
            raise RuntimeError(f"consumer {self.group_id} cannot park records: no parked_events table")
        async with contextlib.AsyncExitStack() as stack:
            if self.write_turn is not None:
                await stack.enter_async_context(self.write_turn())
            session = await stack.enter_async_context(self.sessions.begin())
            new = await self.tables.park(session, self._parked_rows(failed))
            await self.tables.store_offsets(session, self.group_id, _next_offsets([item for item, _ in failed]))
        self._count_parked(new)
        if self.after_commit:
            self.after_commit()

    async def _transaction(self, items: list[Item]) -> None:
        """Decode, dedupe, apply and store offsets for ``items`` in one transaction (inside ``write_turn``)."""
        async with contextlib.AsyncExitStack() as stack:
            if self.write_turn is not None:
                await stack.enter_async_context(self.write_turn())
            session = await stack.enter_async_context(self.sessions.begin())
            parsed: list[tuple[Envelope, Item]] = []
            unusable: list[tuple[Item, BaseException]] = []
            for tp, record in items:
                try:
                    parsed.append((self.decode(record), (tp, record)))
                except UnusableRecord as exc:
                    unusable.append(((tp, record), exc))
            fresh_flags = await self.tables.mark_processed(session, [(env.source, env.id) for env, _ in parsed])
            fresh = [item for item, is_new in zip(parsed, fresh_flags, strict=True) if is_new]
            refused: Sequence[tuple[Envelope, str]] | None = None
            if fresh:
                if self.batch_handler is not None:
                    refused = await self.batch_handler(session, [env for env, _ in fresh])
                    if refused:
                        where = {id(env): item for env, item in fresh}
                        unusable += [(where[id(env)], UnusableRecord(reason)) for env, reason in refused]
                else:
                    assert self.handler is not None
                    for env, (_, record) in fresh:
                        await self.handler(session, env, record)
            newly_parked = 0
            if unusable and self.tables.parked_events is not None:
                newly_parked = await self.tables.park(session, self._parked_rows(unusable))
            elif unusable:
                log.error("records that are not usable skipped (no parked_events table)",
                          extra={"group": self.group_id, "records": len(unusable)})
            await self.tables.store_offsets(session, self.group_id, _next_offsets(items))
        self.applied += len(fresh) - len(refused or ())
        if newly_parked:
            self._count_parked(newly_parked)
        if self.after_commit:
            self.after_commit()


def _next_offsets(items: Iterable[Item]) -> dict[tuple[str, int], int]:
    offsets: dict[tuple[str, int], int] = {}
    for tp, record in items:
        key = (tp.topic, tp.partition)
        offsets[key] = max(offsets.get(key, 0), record.offset + 1)
    return offsets


async def replay_topics(
    bootstrap: str,
    topics: Sequence[str],
    on_batch: BatchHandler,
    *,
    max_records: int = 2000,
    from_offset: int | None = None,
    from_time_ms: int | None = None,
    security: KafkaSecurity | None = None,
    verify: RecordCheck | None = None,
    on_refused: Callable[[RefusedRecord], None] | None = None,
) -> int:
    """Read every partition of ``topics`` from the beginning to its end, without a group, committing nothing.

    A read-only pass for rebuilds and audits. Order is per partition, which is per account (the message key).
    ``from_offset`` starts each partition at that offset (or its first kept one, if later); ``from_time_ms`` at
    the first message whose timestamp is at or after it (``offsets_for_times``), and only messages stamped at or
    after it are handed over (Tansu answers ``offsets_for_times`` with the start of the record batch that holds
    such a message, earlier messages of the batch included): for a log whose head was cut by retention, or to look
    at a recent window only.
    The end is taken when called and raised to each fetch's high watermark: Tansu 0.6 (the embedded broker)
    answers ListOffsets(latest) with the base offset of the partition's last record BATCH + 1, not the log end,
    while the high watermark in fetch responses is right; on Apache Kafka both agree. Returns the messages read.

    ``verify`` is the live consumers' check (``event_auth.EventVerifier``): a record it refuses, like one that is
    not a CloudEvent, is never handed to ``on_batch`` but to ``on_refused`` (and logged), so a rebuild or an audit
    skips and reports exactly what the live consumers parked. ``security``: the same TLS/SASL settings as theirs.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                **_security_kwargs(security))
    await consumer.start()
    count = 0
    try:
        await consumer.topics()  # loads cluster metadata, so partitions_for_topic below is answered
        partitions = [
            TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return 0
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        if from_time_ms is not None:
            found = await consumer.offsets_for_times({tp: from_time_ms for tp in partitions})
            for tp in partitions:
                consumer.seek(tp, found[tp].offset if found.get(tp) is not None else end[tp])
        elif from_offset:
            first = await consumer.beginning_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(from_offset, first[tp]))
        # Not filtered on position: Tansu's end offset may be short of the log end until a fetch's high watermark
        # raises it (the loop below drops a partition once its position reaches the raised end).
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=max_records)
            for tp in remaining:
                end[tp] = max(end[tp], consumer.highwater(tp) or 0)
            items: list[tuple[Envelope, ConsumerRecord]] = []
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp] or (from_time_ms is not None and record.timestamp < from_time_ms):
                        continue
                    try:
                        env = Envelope.from_kafka(record.headers, record.value)
                    except (ValueError, UnicodeDecodeError) as exc:
                        _refuse(on_refused, record, None, f"not a Tollgate CloudEvent: {exc}")
                        continue
                    refused = verify(env, record.headers) if verify is not None else None
                    if refused is not None:
                        _refuse(on_refused, record, env, f"producer not verified: {refused}")
                        continue
                    items.append((env, record))
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            if items:
                await on_batch(items)
                count += len(items)
    finally:
        await consumer.stop()
    return count


def _refuse(on_refused: Callable[[RefusedRecord], None] | None, record: ConsumerRecord, env: Envelope | None,
            reason: str) -> None:
    refused = RefusedRecord(record.topic, record.partition, record.offset, (env.id if env else "")[:200],
                            (env.type if env else "")[:200], (env.source if env else "")[:200], reason[:300])
    log.error("a reader of the log skipped a record", extra={
        "topic": refused.topic, "partition": refused.partition, "offset": refused.offset,
        "event_id": refused.event_id, "reason": refused.reason})
    if on_refused is not None:
        on_refused(refused)
