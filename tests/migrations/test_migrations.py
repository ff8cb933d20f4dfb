"""Every service's migration history builds exactly the tables its code declares, on SQLite and PostgreSQL, and
re-running it changes nothing (a restart migrates nothing)."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tollgate_common.db import create_engine
from tollgate_common.migrations import migrate, schema_drift
from tollgate_dev.testing import fresh_postgres

SERVICES_WITH_A_DATABASE = [
    "tollgate_billing",
    "tollgate_metering",
    "tollgate_policy",
    "tollgate_ingress",
    "tollgate_router",
]


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/m.db", None
        return
    async with fresh_postgres() as db:
        yield db


@pytest.mark.parametrize("package", SERVICES_WITH_A_DATABASE)
async def test_migrations_build_exactly_the_declared_tables(package: str, database: tuple[str, str | None]) -> None:
    url, schema = database
    metadata = importlib.import_module(f"{package}.tables").metadata
    engine = create_engine(url, schema=schema)
    try:
        await migrate(engine, package, schema=schema)
        await migrate(engine, package, schema=schema)
        assert await schema_drift(engine, metadata) == []
    finally:
        await engine.dispose()
