"""The live consumer: ``tollgate.usage.v1`` → :meth:`Metering.ingest_usage` → outbox → ``tollgate.usage.rated.v1``.

It is ``tollgate_common.kafka.DbOffsetConsumer`` (group ``metering``: offsets stored in metering's database in the
same transaction as the effect, dedupe on (source, id)) with two local changes, both reported to the lead for the
shared library:

- batched apply: the stock consumer calls a handler per event, which costs ~9 statements per event (~130 events/s
  on the 2-core machine); here each Kafka batch goes through the projection as a whole, one statement per table,
  the same :meth:`Metering.ingest_usage` a rebuild runs;
- a stored offset past a partition's end (the embedded broker restarted and forgot its log) re-reads the partition
  from the beginning instead of silently skipping the new log's first events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import DbOffsetConsumer

from .application import Metering, RecordedBatch
from .metrics import EVENTS_ARCHIVED, USAGE_RATED, USAGE_UNPRICED
from .tables import messaging

__all__ = ["CONSUMER_GROUP", "UsageConsumer"]

log = logging.getLogger(__name__)

CONSUMER_GROUP = "metering"
#: How stale the in-memory price-book versions may get before a batch re-reads them (multi-replica deployments).
PRICE_BOOK_MAX_AGE_SECONDS = 10.0


def _count(batch: RecordedBatch) -> None:
    USAGE_RATED.inc(len(batch.rated))
    USAGE_UNPRICED.inc(sum(1 for r in batch.rated if not r.rating.priced))
    EVENTS_ARCHIVED.inc(batch.archived)


class UsageConsumer(DbOffsetConsumer):
    def __init__(self, metering: Metering, bootstrap: str, *, after_commit: Callable[[], None] | None = None) -> None:
        super().__init__(
            bootstrap=bootstrap,
            topics=[Topics.USAGE],
            group_id=CONSUMER_GROUP,
            sessions=metering.sessions,
            tables=messaging,
            handler=self._handle_one,
            after_commit=after_commit,
        )
        self.metering = metering

    async def _handle_one(self, session: AsyncSession, env: Envelope, record: ConsumerRecord) -> None:
        """The per-event handler contract (already deduplicated by the base class); unused while ``_apply`` is
        batched, kept so the stock consumer loop stays correct if the override goes away."""
        _count(await self.metering.record_usage(session, [env], publish=True))

    async def _apply(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """One transaction per Kafka batch: dedupe, rate, store, aggregate, archive, outbox, offsets."""
        envelopes: list[Envelope] = []
        for tp, records in batches.items():  # per partition in offset order: per account in order
            for record in records:
                try:
                    envelopes.append(Envelope.from_kafka(record.headers, record.value))
                except (ValueError, UnicodeDecodeError) as exc:
                    log.error(
                        "skipping a message that is not a Tollgate CloudEvent",
                        extra={"topic": tp.topic, "partition": tp.partition, "offset": record.offset,
                               "error": str(exc)},
                    )
        await self.metering.refresh_price_books(PRICE_BOOK_MAX_AGE_SECONDS)
        async with self.sessions.begin() as session:
            batch = await self.metering.ingest_usage(session, envelopes, publish=True)
            for tp, records in batches.items():
                await self.tables.store_offset(session, self.group_id, tp.topic, tp.partition, records[-1].offset + 1)
        self.applied += batch.archived  # every fresh event is archived, rated or not
        _count(batch)

    async def _seek_to_stored(self, assigned: Iterable[TopicPartition]) -> None:
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
                # Also reached when Tansu under-reports the end (it answers ListOffsets with its last record
                # batch's base offset + 1): reading from the beginning then costs time, never correctness.
                log.warning(
                    "stored offset is past the end of the log (the broker lost it?); reading from the beginning",
                    extra={"topic": tp.topic, "partition": tp.partition, "stored_offset": offset, "end": ends[tp]},
                )
            await self.consumer.seek_to_beginning(tp)
