"""PolicyDecided events: how each decision reaches Kafka or the outbox without being lost.

What an event holds (request id, account, the verdict, counts and HMACs of matches, never the text) is built by
:func:`tollgate_dlp.decisions.decided_event`, shared with any other service that decides in process.

Durability: group commit
------------------------
Inspect hands its events to :class:`DecisionLog` and waits until they are durable, then answers. Concurrent
Inspects share one write: while one batch is being written, the next ones queue and go in the next write together.
So an answered Inspect's decision is durable, and a ``kill -9`` loses nothing that was answered (what was still
being written had not been answered either).

Durable means, first choice, acknowledged by Kafka (``acks=all``) on ``tollgate.policy.v1``: the topic is the audit
log (the outbox deletes what it published), so writing there directly spares a database transaction per batch
and the relay's select and delete. When no producer is connected, or a publish fails or takes longer than
:data:`PUBLISH_TIMEOUT`, the batch goes to the outbox instead (committed before answering, as before) and the relay
publishes it later; after a failure the outbox is used for :data:`DIRECT_RETRY_SECONDS` before Kafka is tried
again, so an outage does not add the timeout to every batch. A publish that timed out but did arrive is published
a second time by the relay: consumers dedupe by event id. Events of one account may then reach the topic out of
order across the switch; each carries its time.

When the database does not answer either, Inspect still answers (a policy outage must not stop every request; the
cached policy keeps serving): the events stay in memory, up to :data:`MAX_BACKLOG`, and go out with the next write
that succeeds. Only in that window can a ``kill -9`` lose decisions (and, past the cap, the oldest are dropped with
a warning).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import DIRECT_RETRY_SECONDS, PUBLISH_TIMEOUT, AcknowledgedPublisher
from tollgate_dlp.decisions import DEV_HASH_KEY
from tollgate_dlp.errors import StorageUnavailable

from .repository import PolicyRepository

__all__ = [
    "DEV_HASH_KEY",
    "DIRECT_RETRY_SECONDS",
    "MAX_BACKLOG",
    "PUBLISH_TIMEOUT",
    "DecisionLog",
]

log = logging.getLogger(__name__)

#: Events kept in memory while the database is down, at most.
MAX_BACKLOG = 50_000


class DecisionLog:
    """Group-commits events to Kafka or else the outbox (see the module docstring); ``on_written`` wakes the relay
    after an outbox write. ``kafka.producer`` is set by the app while it has a connected one."""

    def __init__(
        self,
        repository: PolicyRepository,
        on_written: Callable[[], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.on_written = on_written
        self.kafka = AcknowledgedPublisher(Topics.POLICY, what="decisions", clock=clock)
        self._queued: list[tuple[Sequence[Envelope], asyncio.Future[None]]] = []
        self._backlog: list[Envelope] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, events: Sequence[Envelope]) -> None:
        """Return once ``events`` are durable (or, with Kafka and the database down, kept in the backlog)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((events, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Wait for the queued writes (used at stop)."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write_all(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            events = self._backlog + [e for group, _ in batch for e in group]
            try:
                if not await self.kafka.publish(events):
                    await self.repository.add_events(events)
                    if self.on_written is not None:
                        self.on_written()
                self._backlog = []
            except StorageUnavailable:
                dropped = max(0, len(events) - MAX_BACKLOG)
                self._backlog = events[dropped:]
                log.warning(
                    "policy database unavailable; decisions kept in memory",
                    extra={"backlog": len(self._backlog), "dropped": dropped},
                )
            except Exception as exc:  # never leave an Inspect waiting on a bug here
                log.error("writing decisions failed", extra={"error_type": type(exc).__name__})
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
