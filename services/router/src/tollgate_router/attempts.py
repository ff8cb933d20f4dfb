"""Every upstream attempt as an ``AttemptRecorded`` event, durable before the caller's answer goes out.

Writes are group-committed: concurrent requests hand their attempts to one writer task, which writes whatever
has queued in one go and then releases every waiter. A request's answer waits for that write, so a kill -9 loses
no attempt of an answered request (only those of requests still in flight, which got no answer).

Durable means, first choice, acknowledged by Kafka (``acks=all``) on ``tollgate.attempts.v1``: the topic is the
attempts' record (the outbox deletes what it relays), so publishing the batch directly spares a database
transaction per batch and the relay's select and delete. Without a connected producer, or when a publish fails
or takes longer than :data:`PUBLISH_TIMEOUT`, the batch is committed to the outbox instead and relayed later by
:class:`~tollgate_common.kafka.OutboxRelay`; after a failure the outbox is used for :data:`DIRECT_RETRY_SECONDS`
before Kafka is tried again, so an outage does not add the timeout to every batch. A publish that timed out but
did arrive is published again by the relay (the event id is the same: consumers dedupe by it). The same choice
policy's ``DecisionLog`` makes for decisions. A failing database is logged and does not fail the caller's
request (those attempts are then lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tollgate.events.v1 import attempts_pb2 as apb
from tollgate.events.v1 import usage_pb2 as upb
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import DIRECT_RETRY_SECONDS, PUBLISH_TIMEOUT, AcknowledgedPublisher

from .domain import Route, Usage
from .errors import (
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from .tables import messaging

__all__ = ["DIRECT_RETRY_SECONDS", "PUBLISH_TIMEOUT", "Attempt", "AttemptLog", "now_ms", "outcome_of"]

log = logging.getLogger(__name__)

SERVICE = "router"


def outcome_of(error: RouterError | None, *, cancelled: bool = False) -> int:
    """The ``AttemptOutcome`` of an attempt that ended with ``error`` (None: success)."""
    if cancelled:
        return apb.ATTEMPT_OUTCOME_CANCELLED
    if error is None:
        return apb.ATTEMPT_OUTCOME_SUCCEEDED
    if isinstance(error, UpstreamRateLimited):
        return apb.ATTEMPT_OUTCOME_RATE_LIMITED
    if isinstance(error, UpstreamTimeout):
        return apb.ATTEMPT_OUTCOME_TIMEOUT
    if isinstance(error, UpstreamAuthFailed):
        return apb.ATTEMPT_OUTCOME_AUTH_ERROR
    if isinstance(error, UpstreamRejected):
        return apb.ATTEMPT_OUTCOME_REJECTED
    return apb.ATTEMPT_OUTCOME_UPSTREAM_ERROR


@dataclass(slots=True)
class Attempt:
    """One call to one deployment, as the application layer saw it."""

    request_id: str
    account_id: str
    number: int
    model: str
    route: Route
    streamed: bool
    started_at_unix_ms: int
    outcome: int = apb.ATTEMPT_OUTCOME_UNSPECIFIED
    http_status: int = 0
    error_reason: str = ""
    latency_ms: int = 0
    ttft_ms: int = 0
    usage: Usage | None = None
    #: The provider may have served it but reported no (valid) usage: see AttemptRecorded.usage_unknown.
    usage_unknown: bool = False
    upstream_request_id: str = ""
    #: The caller's prompt token estimate (see AttemptRecorded.prompt_tokens_estimate); 0 = unknown.
    prompt_tokens_estimate: int = 0

    def event(self) -> Envelope:
        u = self.usage
        message = apb.AttemptRecorded(
            request_id=self.request_id,
            account_id=self.account_id,
            attempt=self.number,
            model=self.model,
            provider=self.route.provider.name,
            deployment=self.route.name,
            upstream_model=self.route.upstream_model,
            outcome=self.outcome,  # type: ignore[arg-type]
            http_status=self.http_status,
            error_reason=self.error_reason,
            latency_ms=self.latency_ms,
            time_to_first_token_ms=self.ttft_ms,
            usage=upb.TokenUsage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                total_tokens=u.total_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens,
                reasoning_tokens=u.reasoning_tokens,
                cache_write_tokens=u.cache_write_tokens,
            )
            if u is not None
            else None,
            upstream_request_id=self.upstream_request_id,
            usage_unknown=self.usage_unknown,
            streamed=self.streamed,
            region=self.route.region,
            started_at_unix_ms=self.started_at_unix_ms,
            prompt_tokens_estimate=self.prompt_tokens_estimate,
        )
        return envelope_for(
            message,
            id=f"{self.request_id}:{self.number}",
            service=SERVICE,
            subject=self.account_id or "-",
            at_unix_ms=self.started_at_unix_ms,
        )


def now_ms() -> int:
    return int(time.time() * 1000)


class AttemptLog:
    """Group-committing writer of attempt events into the outbox (see the module's docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_batch: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        #: Its ``producer`` is set by the server while it has a connected one: batches then go straight to Kafka.
        self.kafka = AcknowledgedPublisher(Topics.ATTEMPTS, what="attempts", clock=clock)
        self._queue: list[tuple[list[Envelope], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Called after each commit (the relay's ``notify``), so events go out without waiting for a poll.
        self.after_commit: list[Callable[[], None]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="router-attempts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()  # whatever queued meanwhile

    async def record(self, attempts: list[Attempt]) -> None:
        """Returns once the attempts are committed (or the write failed, which is logged)."""
        if not attempts:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(([a.event() for a in attempts], future))
        self._wake.set()
        if self._task is None:  # not started (a test without a writer): write inline
            await self._flush()
        await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            events = [env for group, _ in batch for env in group]
            stored = False
            try:
                if not await self.kafka.publish(events):
                    async with self.sessions.begin() as session:
                        await messaging.add_many_to_outbox(session, Topics.ATTEMPTS, events)
                    stored = True
            except Exception as exc:
                log.error("attempt events not stored", extra={"error": repr(exc), "events": len(events)})
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            if stored:
                for hook in self.after_commit:
                    hook()

