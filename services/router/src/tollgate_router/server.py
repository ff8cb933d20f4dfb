"""The router as a running server, startable in-process (tests, the e2e harness) or from ``__main__``.

Owns the lifetime of the two long-lived resources: the gRPC server and the HTTP client pool to the providers.
Stopping drains: the server refuses new calls, in-flight calls (streams too) get the grace period, and only
then is the HTTP pool closed under them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_common.db import session_maker
from tollgate_common.event_auth import EventSigner
from tollgate_common.events import Topics
from tollgate_common.grpc import GrpcServer
from tollgate_common.internal_auth import InternalAuth
from tollgate_common.kafka import NOTIFIED_POLL_SECONDS, OutboxRelay, run_with_producer
from tollgate_common.migrations import open_database
from tollgate_common.runtime import serve_until

from .application import Router
from .attempts import AttemptLog
from .config import Settings
from .embeddings import Embedder, OpenAIEmbeddingsAdapter
from .gemini_embeddings import GeminiEmbeddingsAdapter
from .grpc_server import SERVICE_NAME, RouterServicer, register
from .kinds import KINDS
from .openai_compat import create_session
from .tables import messaging

__all__ = ["RouterServer", "serve"]

log = logging.getLogger(__name__)


class RouterServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._grpc: GrpcServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._engine: AsyncEngine | None = None
        self._attempts: AttemptLog | None = None
        self._kafka: asyncio.Task[None] | None = None
        self._probes: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._connecting = False

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.port}"

    async def start(self) -> int:
        """Listen (port 0 picks a free one) and return the port."""
        settings = self.settings
        self._engine = await open_database(settings.database_url, "tollgate_router", schema=settings.database_schema)
        self._attempts = AttemptLog(session_maker(self._engine))
        self._attempts.start()
        self._session = create_session(settings.upstream_max_connections)
        session, limits = self._session, settings.upstream_limits
        router = Router(
            settings.catalogue,
            {name: kind.adapter(session, limits) for name, kind in KINDS.items()},
            upstream_timeout=settings.upstream_timeout_seconds,
            resilience=settings.resilience,
            attempts=self._attempts,
        )
        self._grpc = GrpcServer(settings.grpc_host, settings.grpc_port)
        embedder = Embedder(router, OpenAIEmbeddingsAdapter(self._session, limits),
                            GeminiEmbeddingsAdapter(self._session, limits))
        servicer = RouterServicer(router, InternalAuth("router", settings.internal_keys), embedder)
        self._grpc.add(register, servicer, SERVICE_NAME)
        try:
            self.port = await self._grpc.start()
        except BaseException:
            await self._session.close()
            await self._close_database()
            raise
        if settings.resilience.probe_interval_seconds > 0:
            self._probes = asyncio.create_task(self._probe(router), name="router-probes")
        if settings.kafka_bootstrap_servers:
            self._kafka = asyncio.create_task(self._relay(), name="router-attempts-relay")
        else:
            log.warning("ROUTER_KAFKA_BOOTSTRAP_SERVERS is unset: attempt events are only kept in the outbox")
        log.info(
            "router serving",
            extra={
                "address": self.address,
                "catalogue": settings.catalogue_source,
                "providers": [p.name for p in settings.catalogue.providers()],
                "models": len(settings.catalogue),
            },
        )
        return self.port

    async def _relay(self) -> None:
        """Publish the outbox to ``tollgate.attempts.v1`` until stopped; reconnects with backoff."""
        await run_with_producer(
            self.settings.kafka_bootstrap_servers,
            self._relay_attempts,
            stop=self._stop,
            client_id="tollgate-router",
            topics=[Topics.ATTEMPTS],
            connecting=self._set_connecting,
            signer=EventSigner("router", self.settings.internal_keys),
            security=self.settings.kafka_security,
        )

    def _set_connecting(self, connecting: bool) -> None:
        self._connecting = connecting  # nothing to drain while connecting: stop() may cancel this phase outright

    async def _relay_attempts(self, producer: AIOKafkaProducer) -> None:
        assert self._attempts is not None
        # keep=False: a published attempt has nothing more to give; the topic is its record.
        relay = OutboxRelay(self._attempts.sessions, messaging, producer, keep=False, linger_seconds=0.005,
                            poll_seconds=NOTIFIED_POLL_SECONDS)  # woken by the attempt log's after_commit
        self._attempts.after_commit.append(relay.notify)
        self._attempts.kafka.producer = producer  # attempts go straight to Kafka while this producer runs
        try:
            await relay.run(self._stop)
            await relay.publish_pending()  # what the last requests committed before the stop
        finally:
            self._attempts.kafka.producer = None
            self._attempts.after_commit.remove(relay.notify)

    async def _probe(self, router: Router) -> None:
        """Active health checks every ``ROUTER_PROBE_INTERVAL_SECONDS`` until stopped (errors logged, never fatal)."""
        interval = self.settings.resilience.probe_interval_seconds
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
                return
            try:
                await router.probe()
            except Exception as exc:
                log.warning("active probe round failed", extra={"error": repr(exc)})

    async def _close_database(self) -> None:
        if self._attempts is not None:
            await self._attempts.stop()
            self._attempts = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._probes is not None:  # first: a probe must not outlive the HTTP pool
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
            self._probes = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._stop.set()
        if self._kafka is not None:
            if self._connecting:
                self._kafka.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._kafka
            self._kafka = None
        await self._close_database()
        log.info("router stopped")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then drain and close."""
    await serve_until(RouterServer(settings), stop)
