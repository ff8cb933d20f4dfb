"""Publishes exactly one ``UsageRecorded`` per authorized request, without ever blocking a response on Kafka.

Each event is handed to the aiokafka producer in a background task. When Kafka does not acknowledge it in
time (or cannot be reached, or has not started), the event goes to a local outbox table instead, and later events
go straight to the outbox until the relay has published it again: nothing is lost while the broker is down. A
send that timed out may still be delivered by the producer later, so an event can appear twice on the topic;
consumers dedupe on the CloudEvents id (= request id), as every Tollgate consumer must.

On shutdown, pending sends are awaited (each is bounded by the send timeout, then falls back to the outbox), the
relay makes a last attempt, and the producer is flushed; what Kafka still did not take stays in the outbox for the
next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from tollgate.events.v1 import usage_pb2
from tollgate_common.db import create_engine, session_maker
from tollgate_common.event_auth import EventSigner
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import OutboxRelay, ensure_topics, make_producer
from tollgate_common.kafka_security import KafkaSecurity
from tollgate_common.migrations import migrate

from .metrics import Metrics
from .tables import SCHEMA, tables

__all__ = ["SERVICE", "UsagePublisher"]

log = logging.getLogger(__name__)

SERVICE = "ingress"
#: What ingress produces: usage, and the DLP decisions it makes in process (local_policy.py).
_TOPICS = [Topics.USAGE, Topics.POLICY]
_OUTCOME_LABEL = {
    usage_pb2.REQUEST_OUTCOME_SUCCEEDED: "succeeded",
    usage_pb2.REQUEST_OUTCOME_FAILED: "failed",
    usage_pb2.REQUEST_OUTCOME_BLOCKED: "blocked",
    usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED: "client_cancelled",
}


class UsagePublisher:
    def __init__(
        self,
        *,
        bootstrap: str,
        outbox_url: str,
        metrics: Metrics,
        send_timeout: float = 5.0,
        relay_poll_seconds: float = 1.0,
        signer: EventSigner | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.signer = signer
        self.security = security
        self.metrics = metrics
        self.send_timeout = send_timeout
        self.relay_poll_seconds = relay_poll_seconds
        self.engine = create_engine(outbox_url, schema=SCHEMA, pool_size=2)
        self.sessions = session_maker(self.engine)
        #: The outbox's tables (usage events, and the DLP decisions of local_policy.py, which shares the relay).
        self.tables = tables
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        #: False while Kafka is known to be failing: events then go to the outbox directly, in order.
        self._kafka_ok = False
        #: After an outage, create the topic (if missing) before relaying: a broker that came back empty (the
        #: embedded one keeps nothing) would otherwise auto-create it on first produce with its own default
        #: partition count. It also proves the broker answers before the outbox is replayed.
        self._check_topic = False
        self._pending: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._counters: dict[tuple[str, str], Any] = {}

    # --- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the outbox table and start connecting to Kafka in the background (Kafka may be down)."""
        await migrate(self.engine, "tollgate_ingress", schema=SCHEMA)
        self._supervisor = asyncio.create_task(self._supervise(), name="usage-publisher")

    @property
    def connected_producer(self) -> AIOKafkaProducer | None:
        """The producer while Kafka takes events (None while it is known to fail: the outbox is the path then)."""
        return self.producer if self._kafka_ok else None

    def wake_relay(self) -> None:
        """Something was written to the outbox: relay it now rather than at the next poll."""
        self._wake.set()

    @property
    def started(self) -> bool:
        """True once the producer has connected to Kafka at least once."""
        return self.producer is not None

    async def close(self) -> None:
        """Flush: every event handed to :meth:`publish` is on Kafka or in the outbox when this returns."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._stop.set()
        self._wake.set()
        if self._supervisor is not None:
            with contextlib.suppress(Exception):
                await self._supervisor
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), timeout=self.send_timeout + 1)
        await self.engine.dispose()

    # --- the hot path ------------------------------------------------------------------------------------------
    def publish(self, event: usage_pb2.UsageRecorded) -> None:
        """Queue ``event`` for Kafka; returns at once. The CloudEvents id is the request id (= hold id)."""
        env = envelope_for(
            event, id=event.request_id, service=SERVICE, subject=event.account_id,
            at_unix_ms=event.occurred_at_unix_ms or None,
        )
        outcome = _OUTCOME_LABEL.get(event.outcome, "unspecified")
        key = event.account_id
        work = self._send(env, key, outcome) if self._kafka_ok else self._write_outbox(env, key, outcome)
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, env: Envelope, key: str, outcome: str) -> None:
        producer = self.producer
        assert producer is not None
        try:
            async with asyncio.timeout(self.send_timeout):
                delivery = await producer.send(Topics.USAGE, value=env.data, key=key.encode(), headers=env.headers())
                await delivery
        except Exception as exc:
            if self._kafka_ok:
                log.warning("Kafka did not take a usage event; using the outbox until it does",
                            extra={"event_id": env.id, "error": repr(exc)})
            self._kafka_ok = False
            self._check_topic = True
            await self._write_outbox(env, key, outcome)
            return
        self._count(outcome, "kafka")

    def _count(self, outcome: str, path: str) -> None:
        counter = self._counters.get((outcome, path))
        if counter is None:
            counter = self._counters[(outcome, path)] = self.metrics.usage_events.labels(outcome, path)
        counter.inc()

    async def _write_outbox(self, env: Envelope, key: str, outcome: str) -> None:
        for attempt in range(5):
            try:
                async with self.sessions.begin() as session:
                    await tables.add_to_outbox(session, Topics.USAGE, key, env)
                break
            except Exception:
                if attempt == 4:
                    # Nothing else can keep it: say so loudly, with the id reconciliation will look for.
                    log.exception("usage event LOST: neither Kafka nor the outbox took it", extra={"event_id": env.id})
                    return
                await asyncio.sleep(0.1 * (attempt + 1))
        self._count(outcome, "outbox")
        self._wake.set()

    # --- background: connect, then relay the outbox ----------------------------------------------------------
    async def _connect(self) -> bool:
        producer = make_producer(self.bootstrap, client_id="tollgate-ingress", signer=self.signer,
                                 security=self.security)
        try:
            await producer.start()
        except Exception as exc:
            log.warning("Kafka is not reachable yet; usage events go to the outbox",
                        extra={"bootstrap": self.bootstrap, "error": repr(exc)})
            with contextlib.suppress(Exception):
                await producer.stop()
            return False
        with contextlib.suppress(Exception):
            # Creates the topic with the platform's partition count if nobody has yet (else the broker would
            # auto-create it on first produce with its own default).
            await asyncio.wait_for(ensure_topics(self.bootstrap, _TOPICS, attempts=1, security=self.security),
                                   self.send_timeout)
        self.producer = producer
        self.relay = OutboxRelay(self.sessions, tables, producer, keep=False)
        self._kafka_ok = True
        return True

    async def _relay_once(self) -> None:
        assert self.relay is not None
        if self._check_topic:
            # Raises while Kafka is down.
            await ensure_topics(self.bootstrap, _TOPICS, attempts=1, security=self.security)
            self._check_topic = False
        while True:
            async with asyncio.timeout(self.send_timeout * 2):
                published = await self.relay.publish_pending()
            if published:
                self.metrics.outbox_published.inc(published)
                if not self._kafka_ok:
                    log.info("Kafka takes usage events again; the outbox is drained")
                # Only a real publish proves Kafka is back: an empty outbox proves nothing.
                self._kafka_ok = True
            if published < self.relay.batch:
                break

    async def _supervise(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self.producer is None and not await self._connect():
                    raise ConnectionError("Kafka unreachable")
                await self._relay_once()
                backoff = 0.2
                wait = self.relay_poll_seconds
            except Exception as exc:
                if not isinstance(exc, ConnectionError):
                    log.warning("outbox relay failed; will retry", extra={"error": repr(exc)})
                backoff = min(backoff * 2, 5.0)
                wait = backoff
            if self._stop.is_set():
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
