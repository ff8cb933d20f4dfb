"""Policy wired together: database, repository, cache, application and the gRPC server.

``PolicyApp`` starts and stops in-process (tests, the e2e harness) exactly as ``python -m tollgate_policy`` does.
Policy consumes no topic; it publishes PolicyDecided events through its outbox (``events.py``), relayed to Kafka
when ``kafka_bootstrap_servers`` is set (otherwise they wait in the outbox until it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.policy.v1 import policy_service_pb2_grpc
from tollgate_common.db import create_engine, session_maker
from tollgate_common.event_auth import EventSigner
from tollgate_common.events import Topics
from tollgate_common.grpc import GrpcServer
from tollgate_common.internal_auth import InternalAuth
from tollgate_common.kafka import NOTIFIED_POLL_SECONDS, OutboxRelay, run_with_producer
from tollgate_common.runtime import serve_until
from tollgate_dlp.detectors import scan

from .application import PolicyCache, PolicyService
from .config import Settings
from .events import DEV_HASH_KEY, DecisionLog
from .grpc_server import SERVICE_NAME, PolicyServicer
from .repository import PolicyRepository
from .tables import messaging
from .watch import PolicyChanges

__all__ = ["PolicyApp", "serve"]

log = logging.getLogger(__name__)

#: How long the outbox relay waits after a wake-up for more rows (publishing latency, not Inspect's).
_RELAY_LINGER_SECONDS = 0.01


class PolicyApp:
    """The running service. ``start`` returns the bound port (``grpc_port=0`` picks a free one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.service: PolicyService | None = None
        self.server: GrpcServer | None = None
        self.decisions: DecisionLog | None = None
        self.relay: OutboxRelay | None = None
        self.port = 0
        self._stop = asyncio.Event()
        self._kafka: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        s = self.settings
        self.engine = create_engine(s.database_url, schema=s.database_schema)
        repository = PolicyRepository(self.engine, schema=s.database_schema)
        await repository.create_tables()
        self.decisions = DecisionLog(repository, on_written=self._notify_relay)
        if not s.hash_key:
            log.warning("POLICY_HASH_KEY is not set: match hashes use the public development key")
        hash_key = s.hash_key.encode() if s.hash_key else DEV_HASH_KEY
        # Compile the built-in detectors now (~0.1 s), before the health check says SERVING, not on the first request.
        scan("")
        self.service = PolicyService(
            repository, PolicyCache(s.cache_ttl_seconds), decisions=self.decisions, hash_key=hash_key, limits=s.limits,
            changes=PolicyChanges(s.watch_heartbeat_seconds),
        )
        self.server = GrpcServer(s.grpc_host, s.grpc_port)
        self.server.add(
            policy_service_pb2_grpc.add_PolicyServiceServicer_to_server,  # type: ignore[arg-type]
            PolicyServicer(self.service, InternalAuth("policy", s.internal_keys)),
            SERVICE_NAME,
        )
        self.port = await self.server.start()
        if s.kafka_bootstrap_servers:
            self._kafka = asyncio.create_task(self._run_relay(), name="policy-outbox-relay")
        log.info("policy serving", extra={"port": self.port})
        return self.port

    def _notify_relay(self) -> None:
        if self.relay is not None:
            self.relay.notify()

    async def _run_relay(self) -> None:
        """Publish the outbox to Kafka until stopped; reconnects with backoff while Kafka is away."""
        await run_with_producer(
            self.settings.kafka_bootstrap_servers,
            self._relay,
            stop=self._stop,
            client_id="tollgate-policy",
            topics=[Topics.POLICY],
            signer=EventSigner("policy", self.settings.internal_keys),
            security=self.settings.kafka_security,
        )

    async def _relay(self, producer: AIOKafkaProducer) -> None:
        assert self.engine is not None
        # keep=False: published rows are deleted; the events are the audit log, Kafka holds them.
        # linger: under load the rows of several group commits go out in one select, send and delete.
        self.relay = OutboxRelay(
            session_maker(self.engine), messaging, producer, keep=False, linger_seconds=_RELAY_LINGER_SECONDS,
            poll_seconds=NOTIFIED_POLL_SECONDS,  # DecisionLog wakes it after each outbox write
        )
        if self.decisions is not None:
            self.decisions.kafka.producer = producer  # decisions go straight to Kafka while this producer runs
        try:
            await self.relay.run(self._stop)
            await self.relay.publish_pending()  # what the last Inspects wrote before the stop
        finally:
            if self.decisions is not None:
                self.decisions.kafka.producer = None
            self.relay = None

    async def stop(self) -> None:
        """Graceful: report NOT_SERVING, refuse new calls, let in-flight ones finish, then close the database.
        Open watches end first (the watchers reconnect to another replica or ask per request meanwhile)."""
        if self.service is not None:
            self.service.changes.close()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_seconds)
        if self.decisions is not None:
            await self.decisions.flush()
        self._stop.set()
        if self._kafka is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._kafka
        if self.service is not None:
            self.service.close()
        if self.engine is not None:
            await self.engine.dispose()
        log.info("policy stopped")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run policy until ``stop`` is set (SIGTERM in ``python -m tollgate_policy``), then stop gracefully."""
    await serve_until(PolicyApp(settings), stop)
