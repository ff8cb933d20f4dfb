"""Billing test fixtures: real databases (SQLite files, PostgreSQL schemas), a real embedded broker, and a tiny
in-process fake MeteringService that serves the price book over real gRPC."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tollgate_common.events import Topics
from tollgate_common.kafka import ensure_topics
from tollgate_dev.broker import EmbeddedBroker

sys.path.insert(0, str(Path(__file__).parent))

from billing_support import (
    Database,
    FakeMeteringServer,
    postgres_database,
    sqlite_database,
    start_fake_metering,
)


@pytest.fixture
async def metering() -> AsyncIterator[FakeMeteringServer]:
    fake = await start_fake_metering()
    yield fake
    await fake.server.stop(0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Parametrized: the same test on SQLite and on PostgreSQL (skipped with a reason when it does not answer)."""
    if request.param == "sqlite":
        yield await sqlite_database(tmp_path)
        return
    async with postgres_database() as db:
        yield db


@pytest.fixture
def db(database: Database) -> Database:
    """The contract classes' name for :func:`database`: each ``Test…`` class of a contract module runs once per
    database, with no subclass per backend."""
    return database


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> Database:
    return await sqlite_database(tmp_path)


@pytest.fixture
async def postgres_db() -> AsyncIterator[Database]:
    async with postgres_database() as db:
        yield db


@pytest.fixture
def broker() -> Iterator[str]:
    """A real embedded Kafka-compatible broker (Tansu), fresh for each test: topics, groups and the billing log
    of one test must not leak into the next (it starts in well under a second)."""
    b = EmbeddedBroker()
    bootstrap = b.start()
    asyncio.run(ensure_topics(bootstrap, Topics.ALL))
    yield bootstrap
    b.stop()


