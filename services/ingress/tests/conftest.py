"""Ingress test rig: in-process FAKE billing, policy and router gRPC servicers on a free port, the REAL embedded
Kafka broker, a real SQLite outbox, and the app built exactly as ``__main__`` builds it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ingress_fakes import FakeBilling, FakePolicy, FakeRouter, Fakes, make_settings
from tollgate.billing.v1 import billing_service_pb2_grpc as bgrpc
from tollgate.policy.v1 import policy_service_pb2_grpc as pgrpc
from tollgate.router.v1 import router_service_pb2_grpc as rgrpc
from tollgate_common.events import Topics
from tollgate_common.grpc import GrpcServer
from tollgate_common.kafka import ensure_topics
from tollgate_dev.broker import EmbeddedBroker
from tollgate_ingress.api import create_app
from tollgate_ingress.config import Settings
from tollgate_ingress.deps import Deps


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    b = EmbeddedBroker()
    bootstrap = b.start()
    asyncio.run(ensure_topics(bootstrap, [Topics.USAGE]))
    yield bootstrap
    b.stop()


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    server = GrpcServer("127.0.0.1", 0)
    f = Fakes(FakeBilling(), FakePolicy(), FakeRouter(), "")
    server.add(bgrpc.add_BillingServiceServicer_to_server, f.billing, "tollgate.billing.v1.BillingService")
    server.add(pgrpc.add_PolicyServiceServicer_to_server, f.policy, "tollgate.policy.v1.PolicyService")
    server.add(rgrpc.add_RouterServiceServicer_to_server, f.router, "tollgate.router.v1.RouterService")
    port = await server.start()
    f.addr = f"127.0.0.1:{port}"
    yield f
    await server.stop(0.5)


@pytest.fixture
def settings(fakes: Fakes, broker: str, tmp_path: Path) -> Settings:
    return make_settings(fakes, broker, tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    deps = await Deps.start(settings)
    application = create_app(settings, deps)
    yield application
    await application.state.services.shutdown(grace=5)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as c:
        yield c
