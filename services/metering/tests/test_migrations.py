"""The migration history builds exactly the tables the code declares, on SQLite and PostgreSQL, and re-runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tollgate_common.db import create_engine
from tollgate_common.migrations import migrate, schema_drift
from tollgate_dev.testing import local_postgres_url, postgres_schema, postgres_unavailable_reason
from tollgate_metering.tables import metadata


async def test_migrations_match_tables_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/m.db")
    await migrate(engine, "tollgate_metering")
    await migrate(engine, "tollgate_metering")  # idempotent: a restart migrates nothing
    assert await schema_drift(engine, metadata) == []
    await engine.dispose()


async def test_migrations_match_tables_on_postgres() -> None:
    url = local_postgres_url()
    if url is None:
        pytest.skip(postgres_unavailable_reason())
    async with postgres_schema(url) as schema:
        engine = create_engine(url, schema=schema)
        await migrate(engine, "tollgate_metering", schema=schema)
        assert await schema_drift(engine, metadata) == []
        await engine.dispose()
