"""The Kafka transport: rated usage (``tollgate.usage.rated.v1``) in, captured holds out (through the outbox).

Each batch is applied by :class:`tollgate_common.kafka.DbOffsetConsumer` in one database transaction that also
records (source, id) for dedupe and stores the offsets, so a usage event is charged exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import DbOffsetConsumer
from tollgate_common.telemetry import extract_traceparent

from .application import Billing
from .tables import messaging

__all__ = ["GROUP_ID", "USAGE_RATED_TYPE", "UsageHandler", "make_consumer"]

log = logging.getLogger(__name__)

GROUP_ID = "billing"
USAGE_RATED_TYPE = "tollgate.usage.v1.usage.rated"

_tracer = trace.get_tracer("tollgate_billing.consumer")
USAGE_EVENTS = Counter("tollgate_billing_usage_events_total", "Rated usage events applied", ["type"])


class UsageHandler:
    """Maps one Kafka message to the application call; ignores event types billing does not act on."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def __call__(self, session: AsyncSession, env: Envelope, record: ConsumerRecord) -> None:
        if env.type != USAGE_RATED_TYPE:
            USAGE_EVENTS.labels("ignored").inc()
            return
        rated = env.message()
        assert isinstance(rated, usage_pb2.UsageRated)
        with _tracer.start_as_current_span("billing.settle_usage", context=extract_traceparent(env.traceparent)):
            await self.billing.settle_usage(session, rated, env.id)
        USAGE_EVENTS.labels(env.type).inc()


def make_consumer(
    bootstrap: str,
    sessions: async_sessionmaker[AsyncSession],
    billing: Billing,
    after_commit: Callable[[], None] | None = None,
) -> DbOffsetConsumer:
    return DbOffsetConsumer(
        bootstrap=bootstrap,
        topics=[Topics.USAGE_RATED],
        group_id=GROUP_ID,
        sessions=sessions,
        tables=messaging,
        handler=UsageHandler(billing),
        after_commit=after_commit,
    )
