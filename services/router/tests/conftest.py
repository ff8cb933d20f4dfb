"""Real parts only: the router's gRPC server on a free port, in front of the real mock upstream over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_dev.mock_upstream import MockUpstream, start_mock_upstream
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


@pytest.fixture
async def backup() -> AsyncIterator[MockUpstream]:
    upstream = await start_mock_upstream("127.0.0.1", 0)
    yield upstream
    await upstream.stop()


@pytest.fixture
async def start(mock: MockUpstream, backup: MockUpstream, tmp_path: Path) -> AsyncIterator[StartRouter]:
    """A router whose model ``m`` has two deployments: primary (the ``mock`` fixture), then backup."""
    catalogue = tmp_path / "providers.yaml"
    catalogue.write_text(
        f"""
providers:
  primary: {{kind: openai, base_url: "{mock.base_url}"}}
  backup: {{kind: openai, base_url: "{backup.base_url}"}}
models:
  m:
    deployments:
      - {{provider: primary, upstream_model: gpt-4o-mini, priority: 0}}
      - {{provider: backup, upstream_model: gpt-4o-mini, priority: 1}}
  solo: {{provider: primary, upstream_model: gpt-4o-mini}}
"""
    )
    servers: list[tuple[RouterServer, grpc.aio.Channel]] = []

    async def run(**env: str) -> pb_grpc.RouterServiceStub:
        """A router on that catalogue, with ``ROUTER_*`` overrides."""
        environ = {
            "ROUTER_PROVIDERS_FILE": str(catalogue),
            "ROUTER_GRPC_PORT": "0",
            "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/router.db",
            "ROUTER_BACKOFF_BASE_SECONDS": "0.01",
            **env,
        }
        server = RouterServer(Settings.from_env(environ))
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        servers.append((server, channel))
        return pb_grpc.RouterServiceStub(channel)

    yield run
    for server, channel in servers:
        await channel.close()
        await server.stop(grace=0)
