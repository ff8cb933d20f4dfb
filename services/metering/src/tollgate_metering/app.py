"""The running service, startable in-process (tests, the e2e harness) and from ``__main__``.

Start order: database (tables, price-book versions) → gRPC (health SERVING) → Kafka in the background. Kafka is
not needed to answer ``GetPriceBook`` (billing's Authorize depends on it), so a broker that is down or late only
delays rating: the consumer and the outbox relay retry until it answers, and nothing is lost meanwhile (offsets
and unpublished ``UsageRated`` rows live in metering's database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.metering.v1 import metering_service_pb2_grpc as pb_grpc
from tollgate_common.db import session_maker
from tollgate_common.event_auth import EventSigner, EventVerifier
from tollgate_common.events import Topics
from tollgate_common.grpc import GrpcServer
from tollgate_common.internal_auth import InternalAuth
from tollgate_common.kafka import NOTIFIED_POLL_SECONDS, OutboxRelay, run_with_producer
from tollgate_common.runtime import serve_until

from .application import Metering
from .config import Settings
from .consumer import UsageConsumer
from .grpc_server import FULL_NAME, MeteringServicer
from .reconciler import AttemptsConsumer, Reconciler
from .repository import open_database
from .tables import messaging

__all__ = ["MeteringApp", "serve"]

log = logging.getLogger(__name__)


class MeteringApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.metering: Metering | None = None
        self.server: GrpcServer | None = None
        self.consumer: UsageConsumer | None = None
        self.relay: OutboxRelay | None = None
        self.port = 0
        self._stop = asyncio.Event()
        self._kafka: asyncio.Task[None] | None = None
        self._connecting = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        """Open the database, record the configured price book, serve gRPC, start Kafka work; returns the port.

        Raises :class:`~tollgate_metering.errors.PriceBookConflict` when the configured book reuses a stored
        version with different content (the service must not start with an ambiguous version).
        """
        s = self.settings
        self.engine = await open_database(s.database_url, s.database_schema)
        sessions = session_maker(self.engine)
        self.metering = Metering(sessions)
        await self.metering.load_price_books()
        if await self.metering.register_price_book(s.price_book):
            log.info("price book version recorded", extra={"price_book_version": s.price_book.version})
        self.server = GrpcServer(s.grpc_host, s.grpc_port)
        self.server.add(
            pb_grpc.add_MeteringServiceServicer_to_server,
            MeteringServicer(self.metering, InternalAuth("metering", s.internal_keys)),
            FULL_NAME,
        )
        self.port = await self.server.start()
        self._kafka = asyncio.create_task(self._run_kafka(), name="metering-kafka")
        log.info("metering serving", extra={"port": self.port, "price_book_version": s.price_book.version})
        return self.port

    async def _run_kafka(self) -> None:
        await run_with_producer(
            self.settings.kafka_bootstrap_servers,
            self._relay_and_consume,
            stop=self._stop,
            client_id="tollgate-metering",
            topics=[Topics.USAGE, Topics.USAGE_RATED, Topics.ATTEMPTS],
            connecting=self._set_connecting,
            signer=EventSigner("metering", self.settings.internal_keys),
            security=self.settings.kafka_security,
        )

    def _set_connecting(self, connecting: bool) -> None:
        self._connecting = connecting  # nothing to drain while connecting: stop() may cancel this phase outright

    async def _relay_and_consume(self, producer: AIOKafkaProducer) -> None:
        assert self.metering is not None
        # keep=False: published UsageRated rows are deleted; rated_usage holds everything to re-derive them,
        # and the archive (not the outbox) is metering's durable log.
        # Woken after each commit that wrote rows (the consumer's and the reconciler's): the poll is a safety net.
        self.relay = OutboxRelay(self.metering.sessions, messaging, producer, keep=False,
                                 poll_seconds=NOTIFIED_POLL_SECONDS, write_turn=self.metering.write_turn)
        self.consumer = UsageConsumer(
            self.metering, self.settings.kafka_bootstrap_servers, after_commit=self.relay.notify,
            verify=EventVerifier(self.settings.internal_keys),
            security=self.settings.kafka_security,
        )
        s = self.settings
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.relay.run(self._stop))
            tasks.create_task(self.consumer.run(self._stop))
            if s.reconcile_after_seconds > 0:  # requests whose usage event never came, rated from their attempts
                attempts = AttemptsConsumer(self.metering, s.kafka_bootstrap_servers,
                                            verify=EventVerifier(s.internal_keys), security=s.kafka_security)
                reconciler = Reconciler(self.metering, after_seconds=s.reconcile_after_seconds,
                                        on_commit=self.relay.notify)
                tasks.create_task(attempts.run(self._stop))
                tasks.create_task(reconciler.run(self._stop, s.reconcile_sweep_seconds))
        await self.relay.publish_pending()  # what the last batches committed before the stop

    async def stop(self, grace: float = 10.0) -> None:
        """Graceful: NOT_SERVING and drain in-flight calls, finish the consumer's batch, flush the outbox."""
        self._stop.set()
        if self.server is not None:
            await self.server.stop(grace)
        if self._kafka is not None:
            if self._connecting:
                self._kafka.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._kafka
        if self.engine is not None:
            await self.engine.dispose()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (SIGTERM/SIGINT in ``__main__``)."""
    await serve_until(MeteringApp(settings), stop)
