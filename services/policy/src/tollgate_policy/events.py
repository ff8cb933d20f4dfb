"""PolicyDecided events: what each decision records, and how it reaches the outbox without being lost.

What an event holds
-------------------
Request id, account, key, team, model, the deciding scope and version, the verdict, per finding type its count, the
action taken and an HMAC-SHA256 of each matched value (hex) — never the value, never the prompt. The value is
normalised first (``inspection.identity``: a card's digits whatever the grouping, an email in lower case), so the same
card hashes the same however it was written. The HMAC key is ``POLICY_HASH_KEY``; without it the service uses
:data:`DEV_HASH_KEY`, a public development key (derived from a fixed string, so hashes made with it are NOT
secret: set a real key in production; the service warns at start).

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
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tollgate.events.v1 import policy_pb2 as ev
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import DIRECT_RETRY_SECONDS, PUBLISH_TIMEOUT, AcknowledgedPublisher

from .errors import StorageUnavailable
from .inspection import Inspection, Verdict, identity
from .repository import PolicyRepository

__all__ = [
    "DEV_HASH_KEY",
    "DIRECT_RETRY_SECONDS",
    "MAX_BACKLOG",
    "PUBLISH_TIMEOUT",
    "Decision",
    "DecisionLog",
    "decided_event",
    "match_hasher",
]

log = logging.getLogger(__name__)

#: The development HMAC key: SHA-256 of a fixed, public string. Not a secret; production sets POLICY_HASH_KEY.
DEV_HASH_KEY: bytes = hashlib.sha256(b"tollgate policy development hash key (not secret)").digest()
#: Events kept in memory while the database is down, at most.
MAX_BACKLOG = 50_000

_VERDICT = {
    Verdict.ALLOW: ev.POLICY_VERDICT_ALLOW,
    Verdict.FLAG: ev.POLICY_VERDICT_FLAG,
    Verdict.REDACT: ev.POLICY_VERDICT_REDACT,
    Verdict.BLOCK: ev.POLICY_VERDICT_BLOCK,
}
_DIRECTION = {"request": ev.POLICY_DIRECTION_REQUEST, "response": ev.POLICY_DIRECTION_RESPONSE}


def match_hasher(key: bytes) -> Callable[[str], str]:
    """value → hex HMAC-SHA256 under ``key``."""

    def digest(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    return digest


@dataclass(frozen=True)
class Decision:
    """The request context a PolicyDecided event needs besides the inspection itself."""

    request_id: str
    account_id: str
    key_id: str
    team: str
    model: str
    direction: str  # "request" or "response"
    sequence: int
    scanned_bytes: int
    scan_micros: int


def decided_event(
    decision: Decision,
    result: Inspection,
    texts: Sequence[str],
    hasher: Callable[[str], str],
    *,
    shadow: bool,
) -> Envelope:
    """One PolicyDecided envelope (id: request_id:direction[:shadow][:sequence], see policy.proto)."""
    hashes: dict[str, list[str]] = {}
    for f in result.findings:
        hashes.setdefault(f.type, []).append(hasher(identity(f.type, texts[f.text_index][f.start : f.end])))
    now = int(time.time() * 1000)
    message = ev.PolicyDecided(
        request_id=decision.request_id,
        account_id=decision.account_id,
        key_id=decision.key_id,
        team=decision.team,
        model=decision.model,
        policy_scope=result.scope,
        policy_version=result.policy_version,
        verdict=_VERDICT[result.verdict],
        direction=_DIRECTION[decision.direction],
        shadow=shadow,
        findings=[
            ev.FindingCount(type=t, count=n, action=result.actions[t].value, match_hashes=hashes.get(t, []))
            for t, n in sorted(result.counts.items())
        ],
        scanned_bytes=decision.scanned_bytes,
        scan_micros=decision.scan_micros,
        rule=result.rule,
        occurred_at_unix_ms=now,
    )
    event_id = f"{decision.request_id}:{decision.direction}"
    if shadow:
        event_id += ":shadow"
    if decision.sequence:
        event_id += f":{decision.sequence}"
    return envelope_for(message, id=event_id, service="policy", subject=decision.account_id, at_unix_ms=now)


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
