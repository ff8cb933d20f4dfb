"""Real parts only: the router's gRPC server on a free port, in front of the real mock upstream over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_dev.mock_upstream import MockUpstream
from tollgate_router.config import Settings
from tollgate_router.server import RouterServer

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]


@pytest.fixture
async def start_router(mock: MockUpstream, tmp_path: Path) -> AsyncIterator[StartRouter]:
    """Start a router from ``ROUTER_*``-style variables (the mock by default) and return a stub to it."""
    started: list[tuple[RouterServer, grpc.aio.Channel]] = []

    async def start(**env: str) -> pb_grpc.RouterServiceStub:
        environ = {
            "ROUTER_MOCK_BASE_URL": mock.base_url,
            "ROUTER_GRPC_PORT": "0",
            "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/router-{len(started)}.db",
            **env,
        }
        server = RouterServer(Settings.from_env(environ))
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return pb_grpc.RouterServiceStub(channel)

    yield start
    for server, channel in started:
        await channel.close()
        await server.stop(grace=0)


@pytest.fixture
async def stub(start_router: StartRouter) -> pb_grpc.RouterServiceStub:
    return await start_router()
