"""The Kafka transport: rated usage (``tollgate.usage.rated.v1``) in, captured holds out (through the outbox).

``UsageConsumer`` is :class:`tollgate_common.kafka.DbOffsetConsumer` (group ``billing``; offsets and the (source,
id) dedupe rows stored in billing's database in the same transaction as the effect, so a usage event is charged
exactly once) with one local change: a Kafka batch is applied as a whole — bulk dedupe, the holds read once and
locked, the events applied with one statement per table — instead of ~10 statements per event through the
per-event handler (~280 events/s on SQLite here, below the gateway's own request rate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import DbOffsetConsumer
from tollgate_common.telemetry import extract_traceparent

from . import repository
from .application import Billing
from .tables import messaging

__all__ = ["GROUP_ID", "USAGE_RATED_TYPE", "UsageConsumer"]

log = logging.getLogger(__name__)

GROUP_ID = "billing"
USAGE_RATED_TYPE = "tollgate.usage.v1.usage.rated"

_tracer = trace.get_tracer("tollgate_billing.consumer")
USAGE_EVENTS = Counter("tollgate_billing_usage_events_total", "Rated usage events consumed", ["outcome"])


class UsageConsumer(DbOffsetConsumer):
    def __init__(
        self,
        bootstrap: str,
        sessions: async_sessionmaker[AsyncSession],
        billing: Billing,
        *,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            bootstrap=bootstrap,
            topics=[Topics.USAGE_RATED],
            group_id=GROUP_ID,
            sessions=sessions,
            tables=messaging,
            handler=self._handle_one,
            after_commit=after_commit,
        )
        self.billing = billing

    async def _handle_one(self, session: AsyncSession, env: Envelope, record: ConsumerRecord) -> None:
        """The stock per-event contract (already deduplicated by the base class): kept correct so the consumer
        still works if the batched ``_apply`` below goes away."""
        await self._settle(session, [env])

    async def _settle(self, session: AsyncSession, envelopes: list[Envelope]) -> None:
        items: list[tuple[usage_pb2.UsageRated, str]] = []
        for env in envelopes:
            if env.type != USAGE_RATED_TYPE:
                USAGE_EVENTS.labels("ignored").inc()
                continue
            message = env.message()
            assert isinstance(message, usage_pb2.UsageRated)
            items.append((message, env.id))
        if not items:
            return
        # One span per batch, parented to the first event's trace (the batch has many parents).
        with _tracer.start_as_current_span("billing.settle_usage",
                                           context=extract_traceparent(envelopes[0].traceparent)) as span:
            span.set_attribute("tollgate.events", len(items))
            await self.billing.settle_usage_batch(session, items)
        USAGE_EVENTS.labels("settled").inc(len(items))

    async def _apply(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """One transaction per Kafka batch: dedupe, settle, outbox, offsets."""
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
        async with self.billing.sqlite_turn(), self.sessions.begin() as session:
            fresh = await repository.fresh_events(session, envelopes)
            await self._settle(session, fresh)
            for tp, records in batches.items():
                await self.tables.store_offset(session, self.group_id, tp.topic, tp.partition, records[-1].offset + 1)
        self.applied += len(fresh)
