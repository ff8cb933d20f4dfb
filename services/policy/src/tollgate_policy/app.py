"""Policy wired together: database, repository, cache, application and the gRPC server.

``PolicyApp`` starts and stops in-process (tests, the e2e harness) exactly as ``python -m tollgate_policy`` does.
Policy consumes no topic and, for now, publishes none (see README), so there is no Kafka here.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.policy.v1 import policy_service_pb2_grpc
from tollgate_common.db import create_engine
from tollgate_common.grpc import GrpcServer
from tollgate_common.runtime import serve_until

from .application import PolicyCache, PolicyService
from .config import Settings
from .grpc_server import SERVICE_NAME, PolicyServicer
from .repository import PolicyRepository

__all__ = ["PolicyApp", "serve"]

log = logging.getLogger(__name__)


class PolicyApp:
    """The running service. ``start`` returns the bound port (``grpc_port=0`` picks a free one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.service: PolicyService | None = None
        self.server: GrpcServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        s = self.settings
        self.engine = create_engine(s.database_url, schema=s.database_schema)
        repository = PolicyRepository(self.engine, schema=s.database_schema)
        await repository.create_tables()
        self.service = PolicyService(repository, PolicyCache(s.cache_ttl_seconds))
        self.server = GrpcServer(s.grpc_host, s.grpc_port)
        self.server.add(
            policy_service_pb2_grpc.add_PolicyServiceServicer_to_server,  # type: ignore[arg-type]
            PolicyServicer(self.service),
            SERVICE_NAME,
        )
        self.port = await self.server.start()
        log.info("policy serving", extra={"port": self.port})
        return self.port

    async def stop(self) -> None:
        """Graceful: report NOT_SERVING, refuse new calls, let in-flight ones finish, then close the database."""
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_seconds)
        if self.engine is not None:
            await self.engine.dispose()
        log.info("policy stopped")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run policy until ``stop`` is set (SIGTERM in ``python -m tollgate_policy``), then stop gracefully."""
    await serve_until(PolicyApp(settings), stop)
