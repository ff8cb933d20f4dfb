"""``open_database``: the one way a service opens its database and brings it to the newest revision."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from tollgate_common.migrations import open_database
from tollgate_dev.testing import fresh_postgres

#: Any service's history serves; the router's is the smallest.
PACKAGE = "tollgate_router"


def _head(package: str) -> str:
    config = Config()
    config.set_main_option("script_location", f"{package}:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/t.db", None
        return
    async with fresh_postgres() as db:
        yield db


async def test_open_database_migrates_to_head_and_is_idempotent(database: tuple[str, str | None]) -> None:
    url, schema = database
    for _ in range(2):  # a restart opens an already-migrated database
        engine = await open_database(url, PACKAGE, schema=schema)
        try:
            async with engine.connect() as conn:
                version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
                outbox = (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
        finally:
            await engine.dispose()
        assert version == _head(PACKAGE)
        assert outbox == 0


async def test_open_database_raises_when_the_history_is_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="tollgate_no_such_service"):
        await open_database(f"sqlite:///{tmp_path}/t.db", "tollgate_no_such_service")
