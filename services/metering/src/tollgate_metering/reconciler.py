"""Requests whose usage event never came, rated from the router's attempts (tollgate.attempts.v1).

Why: ingress publishes exactly one ``UsageRecorded`` per authorized request, but an ingress killed mid-request
publishes none. Billing then captures the hold in full at its TTL and flags it for reconciliation, while the
router's ``AttemptRecorded`` events for that request carry what the provider reported. So metering keeps the
attempts of requests it has not rated (``attempt_usage``, a work list) and, once a request's last attempt is
``METERING_RECONCILE_AFTER_SECONDS`` old with still no usage event, publishes a reconciled usage event for it on
``tollgate.usage.v1`` (ce_type ``tollgate.usage.v1.usage.reconciled``, id ``reconciled:<request id>``, payload a
``UsageRecorded`` built from the attempts). The usage consumer rates it like any usage event, so:

- each upstream call is charged once: metering rates one event per request id (a late ingress event for the same
  request is "already rated", and a reconciled event after ingress's is skipped the same way);
- billing closes the hold with it: an open hold is captured at the rated price, an expired one is refunded the
  difference (``HoldReconciled``), never charged more than the hold;
- a rebuild from the log rates it again (it is on the topic), and ``tollgate reconcile`` sees a usage event.

What the event carries: the usage the attempts reported, summed (a failed attempt reports none unless the provider
counted some); the model, provider and upstream ids of the attempt that succeeded, else of the last one; outcome
SUCCEEDED when one succeeded, else FAILED with ``usage_unknown`` when an attempt may have been billed unseen
(billing charges that per ``BILLING_UNKNOWN_USAGE_CHARGE``). Such a FAILED event's prompt count is the caller's
prompt estimate (``AttemptRecorded.prompt_tokens_estimate``, the count ingress sized the hold with; the reported
prompt count if larger), no output: the same usage ingress itself publishes for a call whose usage is unknown, so
a stream cut by an ingress crash (the router closes the upstream when its caller leaves: no provider usage) is
charged the priced estimate under ``prompt``, not the whole hold. With no estimate (an older ingress) billing
charges ``prompt`` the hold, the only bound known. No key id, team, project or tags: the attempts do not carry
them (billing takes the key from the hold). Probes (account ``""``) are not stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from tollgate.events.v1 import attempts_pb2, usage_pb2
from tollgate_common.bulk import insert_rows
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import DbOffsetConsumer, RecordCheck
from tollgate_common.kafka_security import KafkaSecurity

from .application import Metering
from .repository import MeteringRepository
from .tables import attempt_usage, messaging

__all__ = ["ATTEMPTS_GROUP", "RECONCILED_TYPE", "AttemptsConsumer", "Reconciler"]

log = logging.getLogger(__name__)

ATTEMPTS_GROUP = "metering-attempts"
ATTEMPT_RECORDED = "tollgate.attempts.v1.attempt.recorded"
RECONCILED_TYPE = "tollgate.usage.v1.usage.reconciled"
#: Requests reconciled per transaction.
BATCH = 500

RECONCILED = Counter("tollgate_metering_usage_reconciled_total",
                     "Usage events metering published from the router's attempts (no usage event came)")

_COLUMNS = ("request_id", "attempt", "account_id", "model", "provider", "upstream_model", "upstream_request_id",
            "succeeded", "usage_unknown", "streamed", "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
            "reasoning_tokens", "ended_at_unix_ms", "prompt_tokens_estimate", "seen_at_unix_ms")
_TEXT_LIMIT = 200
_INT64_MAX = 2**63 - 1


def _count(value: int) -> int:
    return min(max(0, value), _INT64_MAX)


def attempt_row(a: attempts_pb2.AttemptRecorded, seen_at_unix_ms: int) -> tuple[Any, ...]:
    """An attempt as stored: strings cut to their columns, counts clamped (a poison count cannot stop the batch)."""
    u = a.usage
    return (a.request_id[:_TEXT_LIMIT], a.attempt, a.account_id[:_TEXT_LIMIT], a.model[:_TEXT_LIMIT],
            a.provider[:_TEXT_LIMIT], a.upstream_model[:_TEXT_LIMIT], a.upstream_request_id[:_TEXT_LIMIT],
            a.outcome == attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED, a.usage_unknown, a.streamed,
            _count(u.prompt_tokens), _count(u.completion_tokens), _count(u.cached_prompt_tokens),
            _count(u.reasoning_tokens), _count(a.started_at_unix_ms + max(0, a.latency_ms)),
            _count(a.prompt_tokens_estimate), seen_at_unix_ms)


def reconciled_usage(rows: Sequence[Any]) -> usage_pb2.UsageRecorded:
    """The usage event of one request, from its attempts (rows of ``attempt_usage``, any order)."""
    ordered = sorted(rows, key=lambda r: r.attempt)
    served = next((r for r in ordered if r.succeeded), ordered[-1])
    succeeded = any(r.succeeded for r in ordered)
    unknown = not succeeded and any(r.usage_unknown for r in ordered)
    prompt = sum(r.prompt_tokens for r in ordered)
    if unknown:  # charged by estimate, as ingress would have (see the module's docstring)
        prompt = max(prompt, max(r.prompt_tokens_estimate for r in ordered))
    completion = sum(r.completion_tokens for r in ordered)
    return usage_pb2.UsageRecorded(
        request_id=served.request_id,
        account_id=served.account_id,
        hold_id=served.request_id,
        model=served.model,
        requested_model=ordered[0].model,
        provider=served.provider,
        upstream_model=served.upstream_model,
        upstream_request_id=served.upstream_request_id,
        usage=usage_pb2.TokenUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
            cached_prompt_tokens=sum(r.cached_prompt_tokens for r in ordered),
            reasoning_tokens=sum(r.reasoning_tokens for r in ordered),
        ),
        outcome=usage_pb2.REQUEST_OUTCOME_SUCCEEDED if succeeded else usage_pb2.REQUEST_OUTCOME_FAILED,
        streamed=served.streamed,
        occurred_at_unix_ms=max(r.ended_at_unix_ms for r in ordered),
        usage_unknown=unknown,
    )


class AttemptsConsumer(DbOffsetConsumer):
    """Stores the router's attempts of requests not rated yet (group ``metering-attempts``)."""

    def __init__(self, metering: Metering, bootstrap: str, *, verify: RecordCheck | None = None,
                 security: KafkaSecurity | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(
            bootstrap=bootstrap,
            topics=[Topics.ATTEMPTS],
            group_id=ATTEMPTS_GROUP,
            sessions=metering.sessions,
            tables=messaging,
            batch_handler=self._store,
            write_turn=metering.write_turn,
            verify=verify,  # only the router's signed attempts are stored; the rest is parked
            security=security,
        )
        self.clock = clock

    async def _store(self, session: AsyncSession, envelopes: list[Envelope]) -> None:
        now = int(self.clock() * 1000)
        attempts = []
        for env in envelopes:
            if env.type != ATTEMPT_RECORDED:
                continue
            message = env.message()
            assert isinstance(message, attempts_pb2.AttemptRecorded)
            if message.account_id and message.request_id:  # not a health probe
                attempts.append(message)
        if not attempts:
            return
        rated = await MeteringRepository(session).rated_request_ids([a.request_id for a in attempts])
        rows = [attempt_row(a, now) for a in attempts if a.request_id not in rated]
        if rows:
            await insert_rows(session, attempt_usage, _COLUMNS, rows, on_conflict="ON CONFLICT DO NOTHING")


class Reconciler:
    """Publishes a usage event for each request whose attempts are older than ``after_seconds`` unrated."""

    def __init__(self, metering: Metering, *, after_seconds: float, clock: Callable[[], float] = time.time,
                 on_commit: Callable[[], None] | None = None) -> None:
        self.metering = metering
        self.after_ms = int(after_seconds * 1000)
        self.clock = clock
        self.on_commit = on_commit

    async def run(self, stop: asyncio.Event, every_seconds: float) -> None:
        while not stop.is_set():
            try:
                await self.reconcile_due()
            except Exception:
                log.exception("reconciliation from attempts failed; will retry")
            try:
                await asyncio.wait_for(stop.wait(), every_seconds)
            except TimeoutError:
                pass

    async def reconcile_due(self) -> int:
        """One pass: forget the attempts of rated requests, publish usage for the overdue rest. Returns how many."""
        published = 0
        while True:
            count, more = await self._batch(int(self.clock() * 1000) - self.after_ms)
            published += count
            if not more:
                return published

    async def _batch(self, cutoff_ms: int) -> tuple[int, bool]:
        t = attempt_usage
        async with self.metering.write_turn(), self.metering.sessions.begin() as session:
            due = list((await session.execute(
                select(t.c.request_id).group_by(t.c.request_id)
                .having(func.max(t.c.seen_at_unix_ms) <= cutoff_ms).limit(BATCH))).scalars())
            if not due:
                return 0, False
            rated = await MeteringRepository(session).rated_request_ids(due)
            pending = [r for r in due if r not in rated]
            rows = (await session.execute(select(t).where(t.c.request_id.in_(pending)))).all() if pending else []
            by_request: dict[str, list[Any]] = {}
            for row in rows:
                by_request.setdefault(row.request_id, []).append(row)
            events = []
            for request_id, attempts in by_request.items():
                usage = reconciled_usage(attempts)
                env = envelope_for(usage, id=f"reconciled:{request_id}", service="metering",
                                   subject=usage.account_id)
                events.append(Envelope(id=env.id, source=env.source, type=RECONCILED_TYPE, subject=env.subject,
                                       time=env.time, data=env.data, traceparent=env.traceparent))
                log.warning("no usage event for a request the router served; usage published from its attempts",
                            extra={"request_id": request_id, "account_id": usage.account_id,
                                   "prompt_tokens": usage.usage.prompt_tokens,
                                   "completion_tokens": usage.usage.completion_tokens,
                                   "usage_unknown": usage.usage_unknown})
            if events:
                await MeteringRepository(session).add_to_outbox(Topics.USAGE, events)
            await session.execute(delete(t).where(t.c.request_id.in_(due)))
        if events:
            RECONCILED.inc(len(events))
            if self.on_commit is not None:
                self.on_commit()
        return len(events), len(due) == BATCH
