"""Billing wired together: database, price book, gRPC server, outbox relay, usage consumer and hold sweeper.

``BillingApp`` starts and stops in-process (tests, the e2e harness) exactly as ``python -m tollgate_billing`` does.
Kafka is attached in the background and re-attached after a failure: Authorize keeps working while the broker is
away, because its events wait in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from tollgate.billing.v1 import billing_service_pb2_grpc, webhooks_pb2_grpc
from tollgate_common.db import session_maker
from tollgate_common.event_auth import EventSigner, EventVerifier
from tollgate_common.events import Topics
from tollgate_common.grpc import GrpcServer
from tollgate_common.internal_auth import InternalAuth
from tollgate_common.kafka import NOTIFIED_POLL_SECONDS, DbOffsetConsumer, OutboxRelay, ensure_topics, make_producer
from tollgate_common.kafka_security import KafkaSecurity
from tollgate_common.migrations import open_database
from tollgate_common.runtime import serve_until

from . import repository
from .application import Billing, PriceSource
from .config import Settings
from .consumer import GROUP_ID as CONSUMER_GROUP
from .consumer import UsageConsumer
from .credit_admin import CreditAdmin
from .grpc_server import SERVICE_NAME, BillingServicer
from .grpc_webhooks import SERVICE_NAME as WEBHOOK_SERVICE_NAME
from .grpc_webhooks import WebhookServicer
from .price_book import MeteringPriceBook
from .tables import messaging
from .usage_lag import KafkaEndOffsets, UsageLag
from .webhook_admin import WebhookAdmin
from .webhooks import WebhookWorker

__all__ = ["BillingApp", "serve"]

log = logging.getLogger(__name__)

#: How long the outbox relay gathers commits before a publish round (event latency, not request latency).
RELAY_LINGER_SECONDS = 0.2


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False


async def _billing_log_lost(bootstrap: str, security: KafkaSecurity) -> bool:
    """True when the broker holds no billing event at all (a fresh or restarted embedded broker)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                **security.client_kwargs())
    await consumer.start()
    try:
        await consumer.topics()
        parts = [TopicPartition(Topics.BILLING, p) for p in sorted(consumer.partitions_for_topic(Topics.BILLING) or ())]
        if not parts:
            return True
        ends = await consumer.end_offsets(parts)
        return sum(ends.values()) == 0
    finally:
        await consumer.stop()


class BillingApp:
    def __init__(
        self, settings: Settings, *, prices: PriceSource | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.internal_auth = InternalAuth("billing", settings.internal_keys)
        self._own_prices = prices is None
        self.prices: PriceSource = prices or MeteringPriceBook(
            settings.metering_addr, settings.price_book_refresh_seconds, auth=self.internal_auth
        )
        self.clock = clock
        self.engine: AsyncEngine | None = None
        self.sessions: async_sessionmaker[AsyncSession] | None = None
        self.billing: Billing | None = None
        self.server: GrpcServer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        self.consumer: DbOffsetConsumer | None = None
        self.webhooks: WebhookWorker | None = None
        self.port = 0
        self._stopping = asyncio.Event()
        self._consumer_stop = asyncio.Event()
        self._relay_stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        s = self.settings
        self.engine = await open_database(s.database_url, "tollgate_billing", schema=s.database_schema)
        self.sessions = session_maker(self.engine)
        if isinstance(self.prices, MeteringPriceBook):
            await self.prices.refresh()
            self._spawn("price-book", lambda: self.prices.run(self._stopping))  # type: ignore[attr-defined]
        self.billing = Billing(
            self.engine,
            self.prices,
            hold_ttl_seconds=s.hold_ttl_seconds,
            key_cache_seconds=s.key_cache_seconds,
            clock=self.clock,
            on_commit=self._notify_relay,
            usage_lag=self._usage_lag(),
            hold_max_extension_seconds=s.hold_max_extension_seconds,
            unknown_usage_charge=s.unknown_usage_charge,
        )
        if s.kafka_bootstrap_servers:
            self._spawn("kafka", self._run_kafka)
        self._spawn("hold-sweeper", self._sweep)
        if s.webhooks.enabled:
            self.webhooks = WebhookWorker(self.billing, s.webhooks)
            worker = self.webhooks
            self._spawn("webhooks", lambda: worker.run(self._stopping))
        self.server = GrpcServer(s.grpc_host, s.grpc_port)
        self.server.add(
            billing_service_pb2_grpc.add_BillingServiceServicer_to_server,  # type: ignore[arg-type]
            BillingServicer(self.billing, self.internal_auth),
            SERVICE_NAME,
        )
        self.server.add(
            webhooks_pb2_grpc.add_WebhookServiceServicer_to_server,  # type: ignore[arg-type]
            WebhookServicer(WebhookAdmin(self.billing, s.webhooks.allowed_networks), self.internal_auth),
            WEBHOOK_SERVICE_NAME,
        )
        self.port = await self.server.start()
        log.info("billing serving", extra={"port": self.port, "kafka": s.kafka_bootstrap_servers or "off"})
        return self.port

    async def stop(self) -> None:
        """Graceful: NOT_SERVING and drain gRPC, stop consuming, flush the outbox, close the database."""
        self._stopping.set()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_seconds)
        self._consumer_stop.set()
        await self._join("consumer", 15.0)
        await self._join("hold-sweeper", 15.0)
        await self._join("webhooks", self.settings.webhooks.timeout_seconds + 5.0)
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.billing is not None and self.billing.usage_lag is not None:
            await self.billing.usage_lag.close()
        await self._join("price-book", 5.0)
        self._relay_stop.set()  # the relay publishes what is pending, then returns
        await self._join("relay", 15.0)
        await self._join("kafka", 5.0)
        for task in self._tasks.values():
            task.cancel()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if isinstance(self.prices, MeteringPriceBook) and self._own_prices:
            await self.prices.close()
        if self.engine is not None:
            await self.engine.dispose()
        log.info("billing stopped")

    # --- background work ----------------------------------------------------------------------------------------

    def _spawn(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tasks[name] = asyncio.create_task(work(), name=f"billing-{name}")

    async def _join(self, name: str, timeout: float) -> None:
        task = self._tasks.get(name)
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=timeout)
        except TimeoutError:
            log.warning("background task did not stop in time; cancelling it", extra={"task": name})
            task.cancel()
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except Exception:
            log.exception("background task failed", extra={"task": name})

    def _usage_lag(self) -> UsageLag | None:
        """With Kafka, the sweeper asks whether rated usage lags before capturing a hold in full (usage_lag.py)."""
        s = self.settings
        if not s.kafka_bootstrap_servers or self.sessions is None:
            return None
        return UsageLag(topic=Topics.USAGE_RATED, group_id=CONSUMER_GROUP, sessions=self.sessions, tables=messaging,
                        end_offsets=KafkaEndOffsets(s.kafka_bootstrap_servers, s.kafka_security))

    def _notify_relay(self) -> None:
        if self.relay is not None:
            self.relay.notify()

    async def _sweep(self) -> None:
        assert self.billing is not None
        while not await _sleep_unless(self._stopping, self.settings.hold_sweep_seconds):
            try:
                await self.billing.expire_due_holds()
                await CreditAdmin(self.billing).expire_due_promotions()
            except Exception:
                log.exception("hold sweep failed; will retry")

    async def _run_kafka(self) -> None:
        """Attach to Kafka (retrying until it answers), then run the relay and the consumer, restarting them."""
        bootstrap = self.settings.kafka_bootstrap_servers
        assert bootstrap and self.sessions is not None and self.billing is not None
        while True:
            try:
                await ensure_topics(bootstrap, [Topics.BILLING, Topics.USAGE_RATED], attempts=4,
                                    security=self.settings.kafka_security)
                producer = make_producer(bootstrap, client_id="tollgate-billing",
                                         signer=EventSigner("billing", self.settings.internal_keys),
                                         security=self.settings.kafka_security)
                await producer.start()
                break
            except Exception as exc:
                log.warning("Kafka not reachable; events wait in the outbox", extra={"error": repr(exc)})
                if await _sleep_unless(self._stopping, 2.0):
                    return
        self.producer = producer
        try:
            if await _billing_log_lost(bootstrap, self.settings.kafka_security):
                async with self.sessions.begin() as session:
                    if await repository.published_event_count(session):
                        count = await repository.mark_log_unpublished(session)
                        log.warning("the broker has none of billing's events; re-publishing the kept log",
                                    extra={"events": count})
        except Exception:
            log.exception("could not check the broker's copy of billing's log")
        # The relay's marking write queues with Authorize's writes (SQLite), and it lingers a little after a
        # wake-up so that under load one publish round covers many requests' events, not one each.
        # Every billing writer wakes it after its commit (Authorize, the admin commands, credits, the sweeper, the
        # usage consumer), so its poll is only a safety net: NOTIFIED_POLL_SECONDS, not the 0.5 s default.
        self.relay = OutboxRelay(self.sessions, messaging, producer, keep=True, linger_seconds=RELAY_LINGER_SECONDS,
                                 write_turn=self.billing.sqlite_turn, poll_seconds=NOTIFIED_POLL_SECONDS)
        self.consumer = UsageConsumer(bootstrap, self.sessions, self.billing, after_commit=self.relay.notify,
                                      verify=EventVerifier(self.settings.internal_keys),
                                      security=self.settings.kafka_security)
        relay, consumer = self.relay, self.consumer
        self._spawn("relay", lambda: self._keep_running("relay", lambda: relay.run(self._relay_stop),
                                                        self._relay_stop))
        self._spawn("consumer", lambda: self._keep_running("consumer", lambda: consumer.run(self._consumer_stop),
                                                           self._consumer_stop))
        self.relay.notify()

    async def _keep_running(
        self, name: str, work: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                await work()
            except Exception:
                log.exception("background task crashed; restarting it", extra={"task": name})
                if await _sleep_unless(stop, 2.0):
                    return


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run billing until ``stop`` is set (SIGTERM in ``python -m tollgate_billing``), then stop gracefully."""
    await serve_until(BillingApp(settings), stop)
