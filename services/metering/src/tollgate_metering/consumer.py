"""The live consumer: ``tollgate.usage.v1`` → :meth:`Metering.record_usage` → outbox → ``tollgate.usage.rated.v1``.

``DbOffsetConsumer`` (group ``metering``) has already deduplicated each event on (source, id) and stores the offset
in the same transaction as the rating, the archive entry and the outbox row; this module only adds the trace span
that carries the producer's trace into the ``UsageRated`` it publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import DbOffsetConsumer
from tollgate_common.telemetry import extract_traceparent

from .application import Metering
from .metrics import EVENTS_ARCHIVED, USAGE_RATED, USAGE_UNPRICED
from .tables import messaging

__all__ = ["CONSUMER_GROUP", "make_consumer"]

log = logging.getLogger(__name__)

CONSUMER_GROUP = "metering"


class _LogResetAwareConsumer(DbOffsetConsumer):
    """``DbOffsetConsumer`` that notices a log which restarted below its stored offsets.

    The embedded broker forgets everything on restart, and it answers a fetch past the end of a partition with an
    empty batch instead of OFFSET_OUT_OF_RANGE, so the stock consumer would wait at the old offset and silently
    skip the first events of the new log (unbilled usage). A stored offset beyond the partition's end can only mean
    the log was reset: read it from the beginning instead; (source, id) dedupe drops what was already applied.
    Local workaround, reported to the lead for ``tollgate_common.kafka``.
    """

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
                log.warning(
                    "stored offset is past the end of the log (the broker lost it?); reading from the beginning",
                    extra={"topic": tp.topic, "partition": tp.partition, "stored_offset": offset, "end": ends[tp]},
                )
            await self.consumer.seek_to_beginning(tp)

_tracer = trace.get_tracer("tollgate_metering")


def make_consumer(
    metering: Metering,
    sessions: async_sessionmaker[AsyncSession],
    bootstrap: str,
    *,
    after_commit: Callable[[], None] | None = None,
) -> DbOffsetConsumer:
    async def handle(session: AsyncSession, env: Envelope, record: ConsumerRecord) -> None:
        with _tracer.start_as_current_span(
            "metering rate usage", context=extract_traceparent(env.traceparent), kind=trace.SpanKind.CONSUMER
        ):
            batch = await metering.record_usage(session, [env], publish=True)
        USAGE_RATED.inc(len(batch.rated))
        USAGE_UNPRICED.inc(sum(1 for r in batch.rated if not r.rating.priced))
        EVENTS_ARCHIVED.inc(batch.archived)

    return _LogResetAwareConsumer(
        bootstrap=bootstrap,
        topics=[Topics.USAGE],
        group_id=CONSUMER_GROUP,
        sessions=sessions,
        tables=messaging,
        handler=handle,
        after_commit=after_commit,
    )
