"""Rebuild from tollgate.usage.v1 and reconcile with the live database, on the real broker and real databases.

The live state is produced once per module by the real service (consumer, two price-book versions, duplicates, an
unpriced model); each test rebuilds from the same broker into its own fresh database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update
from tollgate_common.db import session_maker
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import ensure_topics, make_producer
from tollgate_dev.broker import EmbeddedBroker
from tollgate_metering.app import MeteringApp
from tollgate_metering.application import Metering
from tollgate_metering.config import Settings, load_price_book_file
from tollgate_metering.domain import DEMO_PRICE_BOOK
from tollgate_metering.rebuild import (
    NotFresh,
    compare_databases,
    live_price_books,
    rebuild,
    rebuild_from_archive,
)
from tollgate_metering.repository import open_database
from tollgate_metering.tables import aggregates, archive, rated_usage

NOON = 1_795_176_000_000  # 2026-11-20T12:00:00Z
HOUR = 3_600_000
V2 = """\
version: v2-2026-11-20
currency: USD
markup_bps: 3000
effective_from: 2026-11-20T13:00:00Z
models:
  gpt-4o-mini: {input_price_nanos: 140, output_price_nanos: 550, max_output_tokens: 16384}
  gpt-4o: {input_price_nanos: 2500, output_price_nanos: 10000, max_output_tokens: 16384}
"""


@dataclasses.dataclass(frozen=True)
class Live:
    bootstrap: str
    db: Path
    book: Path
    published: int
    unique: int

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def copy(self, to: Path) -> str:
        """A private copy of the live database (for tests that alter it)."""
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{self.db}{suffix}").exists():
                shutil.copy(f"{self.db}{suffix}", f"{to}{suffix}")
        return f"sqlite:///{to}"


def _events(make_usage: Any) -> list[Envelope]:
    events = []
    for i in range(40):
        events.append(make_usage(
            f"req_{i:03d}", account=f"acc_{i % 3}", key=f"key_{i % 2}", model=("gpt-4o-mini", "gpt-4o")[i % 2],
            prompt=100 + i * 37, completion=10 + i * 11, at=NOON + i * 6 * 60_000 + i,  # spans both versions
            team=("", "search")[i % 2], project=("", "p1", "p2")[i % 3], tags={"i": str(i)},
        ))
    events.append(make_usage("req_unpriced", model="no-such-model", at=NOON + 3 * HOUR))
    events.append(make_usage("req_late_day", account="acc_1", at=NOON + 13 * HOUR))  # next UTC day
    return [*events, events[5], events[17], events[-1]]  # at-least-once delivery: duplicates


async def _produce_live_state(bootstrap: str, workdir: Path, make_usage: Any) -> Live:
    db, book = workdir / "live.db", workdir / "v2.yaml"
    book.write_text(V2)
    # The live database first knew the demo book, then got v2 (effective from 13:00 UTC that day).
    engine = await open_database(f"sqlite:///{db}", "metering")
    await Metering(session_maker(engine)).register_price_book(DEMO_PRICE_BOOK)
    await engine.dispose()
    await ensure_topics(bootstrap, [Topics.USAGE, Topics.USAGE_RATED])
    events = _events(make_usage)
    unique = len({e.id for e in events})
    app = MeteringApp(Settings.from_env({
        "METERING_GRPC_HOST": "127.0.0.1", "METERING_GRPC_PORT": "0", "METERING_DATABASE_URL": f"sqlite:///{db}",
        "METERING_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "METERING_PRICE_BOOK_FILE": str(book),
    }))
    await app.start()
    try:
        producer = make_producer(bootstrap)
        await producer.start()
        for env in events:
            await producer.send(Topics.USAGE, env.data, key=env.subject.encode(), headers=env.headers())
        await producer.stop()
        assert app.metering is not None
        for _ in range(600):
            async with app.metering.sessions() as s:
                done = (await s.execute(select(func.count()).select_from(rated_usage))).scalar_one()
            if done == unique:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"live metering rated {done} of {unique} requests")
    finally:
        await app.stop()
    return Live(bootstrap, db, book, published=len(events), unique=unique)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, make_usage: Any) -> Iterator[Live]:
    broker = EmbeddedBroker()
    bootstrap = broker.start()
    try:
        yield asyncio.run(_produce_live_state(bootstrap, tmp_path_factory.mktemp("live"), make_usage))
    finally:
        broker.stop()


async def test_the_live_state_used_both_price_book_versions(live: Live) -> None:
    assert [b.version for b in await live_price_books(live.url, "metering")] == ["demo-embed-2026-12", "v2-2026-11-20"]
    engine = await open_database(live.url, "metering")
    async with session_maker(engine)() as s:
        versions = dict((await s.execute(
            select(rated_usage.c.price_book_version, func.count()).group_by(rated_usage.c.price_book_version)
        )).all())
    await engine.dispose()
    assert set(versions) == {"demo-embed-2026-12", "v2-2026-11-20"}


async def test_a_rebuild_equals_live(live: Live, tmp_path: Path) -> None:
    into = f"sqlite:///{tmp_path}/rebuilt.db"
    books = [*await live_price_books(live.url, "metering"), load_price_book_file(live.book)]
    result = await rebuild(live.bootstrap, into, books)
    assert (result.events_read, result.rated) == (live.published, live.unique)
    report = await compare_databases(live.url, into)
    assert report.equal, report.render()
    assert [(t.table, t.live_rows, t.rebuilt_rows) for t in report.tables] == [
        ("rated_usage", live.unique, live.unique),
        ("usage_aggregates", report.tables[1].live_rows, report.tables[1].live_rows),
    ]
    assert report.tables[1].live_rows == 8  # 6 (account, key, model, team, project) combos + unpriced + next day
    assert report.render().endswith("result: EQUAL")
    with pytest.raises(NotFresh):  # a second rebuild into the same database is refused, not merged
        await rebuild(live.bootstrap, into, books)


async def test_a_rebuild_into_postgres_equals_live(live: Live, postgres: tuple[str, str]) -> None:
    url, schema = postgres
    books = [*await live_price_books(live.url, "metering"), load_price_book_file(live.book)]
    await rebuild(live.bootstrap, url, books, schema=schema)
    report = await compare_databases(live.url, url, rebuilt_schema=schema)
    assert report.equal, report.render()


async def test_a_rebuild_from_the_archive_equals_live_and_reproduces_every_hash(live: Live, tmp_path: Path) -> None:
    """When the broker has forgotten the log, the archive alone rebuilds the same state, chain for chain."""
    into = f"sqlite:///{tmp_path}/from-archive.db"
    books = [*await live_price_books(live.url, "metering"), load_price_book_file(live.book)]
    result = await rebuild_from_archive(live.url, into, books)
    assert (result.events_read, result.rated) == (live.unique, live.unique)
    report = await compare_databases(live.url, into)
    assert report.equal, report.render()

    async def hashes(url: str) -> list[tuple[str, int, str]]:
        engine = await open_database(url, "metering")
        async with session_maker(engine)() as s:
            rows = (await s.execute(select(archive.c.account_id, archive.c.seq, archive.c.hash)
                                    .order_by(archive.c.account_id, archive.c.seq))).all()
        await engine.dispose()
        return [tuple(r) for r in rows]

    assert await hashes(into) == await hashes(live.url)


async def test_an_altered_live_database_fails_the_comparison_and_the_report_names_the_rows(
    live: Live, tmp_path: Path
) -> None:
    altered = live.copy(tmp_path / "altered.db")
    into = f"sqlite:///{tmp_path}/rebuilt.db"
    await rebuild(live.bootstrap, into, [*await live_price_books(altered, "metering"), load_price_book_file(live.book)])
    engine = await open_database(altered, "metering")
    async with session_maker(engine).begin() as s:
        await s.execute(update(rated_usage).where(rated_usage.c.request_id == "req_007")
                        .values(resale_price_nanos=rated_usage.c.resale_price_nanos - 1))
        await s.execute(delete(rated_usage).where(rated_usage.c.request_id == "req_012"))
        await s.execute(update(aggregates).where(aggregates.c.account_id == "acc_2")
                        .values(requests=aggregates.c.requests + 1))
    await engine.dispose()

    report = await compare_databases(altered, into)
    assert not report.equal
    rated, aggs = report.tables
    assert [k for k, _ in rated.differing] == [("req_007",)]
    [(_, columns)] = rated.differing
    assert set(columns) == {"resale_price_nanos"}
    live_value, rebuilt_value = columns["resale_price_nanos"]
    assert rebuilt_value - live_value == 1
    assert rated.only_rebuilt == [("req_012",)] and rated.only_live == []
    assert aggs.differing and all(key[0] == "acc_2" for key, _ in aggs.differing)
    text = report.render()
    assert "req_007" in text and "req_012" in text and text.endswith("result: DIFFERENT")


def test_the_rebuild_command_exits_0_when_equal_1_when_different_2_when_the_target_is_not_empty(
    live: Live, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env["METERING_PRICE_BOOK_FILE"] = str(live.book)

    def command(into: str, live_url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tollgate_metering", "rebuild", "--kafka", live.bootstrap, "--into", into,
             "--compare-with", live_url], env=env, capture_output=True, text=True, timeout=120,
        )

    equal = command(f"sqlite:///{tmp_path}/a.db", live.url)
    assert equal.returncode == 0, equal.stderr
    assert f"{live.published} events read, {live.unique} rated" in equal.stdout
    assert "result: EQUAL" in equal.stdout

    altered = live.copy(tmp_path / "altered.db")
    asyncio.run(_delete_one_rated_row(altered))
    different = command(f"sqlite:///{tmp_path}/b.db", altered)
    assert different.returncode == 1, different.stderr
    assert "only in rebuilt: req_020" in different.stdout and "result: DIFFERENT" in different.stdout

    not_empty = command(f"sqlite:///{tmp_path}/a.db", live.url)
    assert not_empty.returncode == 2
    assert "already has" in not_empty.stderr and "Traceback" not in not_empty.stderr



async def _delete_one_rated_row(url: str) -> None:
    engine = await open_database(url, "metering")
    async with session_maker(engine).begin() as s:
        await s.execute(delete(rated_usage).where(rated_usage.c.request_id == "req_020"))
    await engine.dispose()
