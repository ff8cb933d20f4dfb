"""Is rated usage still on its way? What the hold sweeper asks before it captures a hold in full.

Why: a hold past its TTL is captured in full because its usage event is presumed lost. During an outage longer
than the TTL (the broker down, metering down, billing's consumer stuck) usage is not lost but late, and capturing
every open hold in full would charge every in-flight request its maximum cost. So the sweeper only expires a hold
when usage is known to have caught up past that hold's deadline; otherwise it leaves it open (extended), up to
``BILLING_HOLD_MAX_EXTENSION_SECONDS`` past its TTL.

Two signals, either of which means "lagging":

- **offsets**: the end offsets of ``tollgate.usage.rated.v1`` (asked of the broker) against the offsets billing's
  consumer group stored in billing's database (all partitions, whichever replica consumes them). Records not yet
  applied, or a broker that does not answer, mean lagging. This sees a broker outage and a stuck consumer.
- **watermark**: the newest ``occurred_at`` of the usage this process has applied. A hold whose deadline is after
  it has not been overtaken by usage yet: nothing that happened after its deadline has arrived. This sees an
  outage upstream of billing (metering down: the topic is empty, not lagging), and a backlog caught up in event
  time order. On a quiet system (or a replica that consumes no partition) it also holds holds open, which the
  maximum extension bounds; another replica whose watermark has passed them expires them.

``expiry_cutoff(now)`` turns both into one number: the sweeper expires open holds whose deadline is at or before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tollgate_common.db import MessagingTables
from tollgate_common.kafka_security import KafkaSecurity

__all__ = ["EndOffsets", "KafkaEndOffsets", "UsageLag"]

log = logging.getLogger(__name__)

#: How long the sweeper waits for the broker's end offsets before counting them as unknown (= lagging).
END_OFFSETS_TIMEOUT_SECONDS = 5.0

#: topic → {(topic, partition): the offset after its last record}; a coroutine function.
EndOffsets = Callable[[str], Any]


class KafkaEndOffsets:
    """The end offsets of one topic's partitions, from a group-less client kept open between sweeps."""

    def __init__(self, bootstrap: str, security: KafkaSecurity | None = None) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self._client: AIOKafkaConsumer | None = None

    async def __call__(self, topic: str) -> dict[tuple[str, int], int]:
        try:
            if self._client is None:
                security = self.security.client_kwargs() if self.security is not None else {}
                self._client = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                                enable_auto_commit=False, **security)
                await self._client.start()
            await self._client.topics()  # refresh metadata: partitions added since
            partitions = [TopicPartition(topic, p) for p in sorted(self._client.partitions_for_topic(topic) or ())]
            if not partitions:
                return {}
            ends = await self._client.end_offsets(partitions)
            return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}
        except BaseException:
            await self.close()  # a fresh client next time (the broker may have moved or restarted)
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.stop()


class UsageLag:
    """Billing's view of how far behind its rated usage is (see the module docstring)."""

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        sessions: async_sessionmaker[AsyncSession],
        tables: MessagingTables,
        end_offsets: EndOffsets,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.sessions = sessions
        self.tables = tables
        self.end_offsets = end_offsets
        #: Newest ``occurred_at`` (unix ms) of the usage applied by this process; 0 = none yet.
        self.watermark_unix_ms = 0
        #: Records on the topic not yet applied at the last look; None = unknown (the broker did not answer).
        self.unapplied: int | None = None

    def applied(self, occurred_at_unix_ms: int) -> None:
        """The consumer applied usage that happened at this time (called after its transaction committed)."""
        self.watermark_unix_ms = max(self.watermark_unix_ms, occurred_at_unix_ms)

    async def refresh(self) -> int | None:
        """Count the records of the topic that billing has not applied yet (None when the broker does not say)."""
        try:
            ends = await asyncio.wait_for(self.end_offsets(self.topic), END_OFFSETS_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("usage topic end offsets unknown; counting usage as lagging", extra={"error": repr(exc)})
            self.unapplied = None
            return None
        async with self.sessions() as session:
            stored = await self.tables.load_offsets(session, self.group_id)
        # A partition billing never consumed counts from 0. An end below the stored offset (a broker that lost its
        # log, or Tansu under-reporting its end) counts as nothing left.
        self.unapplied = sum(max(0, end - stored.get(tp, 0)) for tp, end in ends.items())
        return self.unapplied

    async def expiry_cutoff(self, now_unix_ms: int) -> int:
        """Open holds whose deadline is at or before this may be expired now; the rest are still awaiting usage."""
        unapplied = await self.refresh()
        if unapplied is None or unapplied > 0:
            return 0  # usage is waiting (or may be): no hold is presumed lost
        return min(now_unix_ms, self.watermark_unix_ms)

    async def close(self) -> None:
        closer = getattr(self.end_offsets, "close", None)
        if closer is not None:
            await closer()
