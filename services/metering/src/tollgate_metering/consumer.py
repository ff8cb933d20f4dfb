"""The live consumer: ``tollgate.usage.v1`` → :meth:`Metering.record_usage` → outbox → ``tollgate.usage.rated.v1``.

``DbOffsetConsumer`` (group ``metering``) has already deduplicated each event on (source, id) and stores the offset
in the same transaction as the rating, the archive entry and the outbox row; this module only adds the trace span
that carries the producer's trace into the ``UsageRated`` it publishes.
"""

from __future__ import annotations

from collections.abc import Callable

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

CONSUMER_GROUP = "metering"

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

    return DbOffsetConsumer(
        bootstrap=bootstrap,
        topics=[Topics.USAGE],
        group_id=CONSUMER_GROUP,
        sessions=sessions,
        tables=messaging,
        handler=handle,
        after_commit=after_commit,
    )
