"""The router as a running server, startable in-process (tests, the e2e harness) or from ``__main__``.

Owns the lifetime of the two long-lived resources: the gRPC server and the HTTP client pool to the providers.
Stopping drains: the server refuses new calls, in-flight calls (streams too) get the grace period, and only
then is the HTTP pool closed under them.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from tollgate_common.grpc import GrpcServer
from tollgate_common.runtime import serve_until

from .anthropic import AnthropicAdapter
from .application import Router
from .config import Settings
from .gemini import GeminiAdapter
from .grpc_server import SERVICE_NAME, RouterServicer, register
from .openai_compat import OpenAICompatibleAdapter, create_session

__all__ = ["RouterServer", "serve"]

log = logging.getLogger(__name__)


class RouterServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._grpc: GrpcServer | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.port}"

    async def start(self) -> int:
        """Listen (port 0 picks a free one) and return the port."""
        settings = self.settings
        self._session = create_session(settings.upstream_max_connections)
        router = Router(
            settings.catalogue,
            {
                "openai": OpenAICompatibleAdapter(self._session),
                "azure": OpenAICompatibleAdapter(self._session),
                "anthropic": AnthropicAdapter(self._session),
                "gemini": GeminiAdapter(self._session),
            },
            upstream_timeout=settings.upstream_timeout_seconds,
        )
        self._grpc = GrpcServer(settings.grpc_host, settings.grpc_port)
        self._grpc.add(register, RouterServicer(router), SERVICE_NAME)
        try:
            self.port = await self._grpc.start()
        except BaseException:
            await self._session.close()
            raise
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

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        log.info("router stopped")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then drain and close."""
    await serve_until(RouterServer(settings), stop)
