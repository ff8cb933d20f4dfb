"""One group-commit writer for an event log that must be durable before the caller proceeds: policy's and
ingress's PolicyDecided decisions (issue 9 asks for one writer where there were copies).

Durability: group commit
------------------------
A caller hands its events to :class:`GroupCommitLog` and waits until they are durable, then answers. Concurrent
callers share one write: while one batch is being written, the next ones queue and go in the next write together.
So an answered caller's event is durable, and a ``kill -9`` loses nothing that was answered (what was still
being written had not been answered either).

Durable means, first choice, acknowledged by Kafka (``acks=all``) on the log's topic: the topic is the audit
log (the outbox deletes what it published), so writing there directly spares a database transaction per batch
and the relay's select and delete. When no producer is connected, or a publish fails or takes longer than
:data:`PUBLISH_TIMEOUT`, the batch goes to the outbox instead (committed before answering, as before) and the relay
publishes it later; after a failure the outbox is used for :data:`DIRECT_RETRY_SECONDS` before Kafka is tried
again, so an outage does not add the timeout to every batch. A publish that timed out but did arrive is published
a second time by the relay: consumers dedupe by event id. Events of one account may then reach the topic out of
order across the switch; each carries its time.

When the database does not answer either, the caller still goes on (an outage of the log's store must not stop
every request): the events stay in memory, up to :data:`MAX_BACKLOG`, and go out with the next write
that succeeds. Only in that window can a ``kill -9`` lose decisions (and, past the cap, the oldest are dropped with
a warning).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from .events import Envelope
from .kafka import DIRECT_RETRY_SECONDS, PUBLISH_TIMEOUT, AcknowledgedPublisher

__all__ = ["DIRECT_RETRY_SECONDS", "MAX_BACKLOG", "PUBLISH_TIMEOUT", "GroupCommitLog"]

log = logging.getLogger(__name__)

#: Events kept in memory while the database is down, at most.
MAX_BACKLOG = 50_000


class GroupCommitLog:
    """Group-commits events to Kafka (``topic``) or else the outbox (``write_outbox``, one transaction per batch;
    see the module docstring). ``unavailable`` are the exceptions that mean "the outbox's database is away" (the
    events are then kept in memory); ``on_written`` wakes the relay after an outbox write. ``kafka.producer`` is set
    by the service while it has a connected one."""

    def __init__(
        self,
        topic: str,
        write_outbox: Callable[[Sequence[Envelope]], Awaitable[None]],
        *,
        unavailable: tuple[type[BaseException], ...],
        on_written: Callable[[], None] | None = None,
        what: str = "events",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write_outbox = write_outbox
        self.unavailable = unavailable
        self.on_written = on_written
        self.what = what
        self.kafka = AcknowledgedPublisher(topic, what=what, clock=clock)
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
                    await self.write_outbox(events)
                    if self.on_written is not None:
                        self.on_written()
                self._backlog = []
            except self.unavailable:
                dropped = max(0, len(events) - MAX_BACKLOG)
                self._backlog = events[dropped:]
                log.warning(
                    f"outbox database unavailable; {self.what} kept in memory",
                    extra={"backlog": len(self._backlog), "dropped": dropped},
                )
            except Exception as exc:  # never leave a caller waiting on a bug here
                log.error(f"writing {self.what} failed", extra={"error_type": type(exc).__name__})
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
