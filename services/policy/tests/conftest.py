"""Policy test fixtures: real databases (SQLite files, PostgreSQL schemas) and a real gRPC server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_policy import PolicyApp, Settings


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[PolicyApp]:
    """The whole service, in-process, on a free port, over a fresh SQLite file."""
    running = PolicyApp(
        Settings(database_url=f"sqlite:///{tmp_path / 'policy.db'}", grpc_host="127.0.0.1", grpc_port=0)
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def stub(app: PolicyApp) -> AsyncIterator[pb_grpc.PolicyServiceStub]:
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield pb_grpc.PolicyServiceStub(channel)
