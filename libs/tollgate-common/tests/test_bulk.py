"""Plain-SQL bulk reads and writes (tollgate_common.bulk) on a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, select
from tollgate_common.bulk import insert_rows, select_rows, update_rows
from tollgate_common.db import create_engine, create_schema
from tollgate_dev.testing import fresh_postgres


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/t.db", None
        return
    async with fresh_postgres() as db:
        yield db


async def test_select_and_update_rows_by_key(database: tuple[str, str | None]) -> None:
    url, schema = database
    md = MetaData()
    items = Table("items", md, Column("item_id", String(20), primary_key=True),
                  Column("state", String(10), nullable=False), Column("amount", BigInteger, nullable=True))
    engine = create_engine(url, schema=schema)
    await create_schema(engine, md, schema=schema)
    try:
        async with engine.begin() as conn:
            await insert_rows(conn, items, ("item_id", "state", "amount"),
                              [(f"i{n:04d}", "open", n) for n in range(1200)])
        async with engine.begin() as conn:
            # more keys than one SQLite statement takes, unknown keys ignored, ordered by key
            found = await select_rows(conn, items, "item_id", ("item_id", "amount"),
                                      ["i0007", "nope", *[f"i{n:04d}" for n in range(600, 1200)]], for_update=True)
            assert [r.item_id for r in found] == ["i0007", *[f"i{n:04d}" for n in range(600, 1200)]]
            assert found[0].amount == 7
            changed = await update_rows(conn, items, "item_id", ("state", "amount"),
                                        [("i0001", "closed", None), ("i0002", "closed", 2**62), ("nope", "x", 1)],
                                        where="\"items\".\"state\" = 'open'")
            assert changed == 2
            again = await update_rows(conn, items, "item_id", ("state",), [("i0001", "again")],
                                      where="\"items\".\"state\" = 'open'")
            assert again == 0  # the extra condition holds it back
        async with engine.connect() as conn:
            rows = (await conn.execute(select(items).where(items.c.item_id.in_(["i0001", "i0002", "i0003"]))
                                       .order_by(items.c.item_id))).all()
        assert [tuple(r) for r in rows] == [("i0001", "closed", None), ("i0002", "closed", 2**62),
                                            ("i0003", "open", 3)]
    finally:
        await engine.dispose()
