"""Helpers shared by billing's tests (importable because conftest puts this directory on sys.path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import usage_pb2
from tollgate.metering.v1 import metering_service_pb2 as mpb
from tollgate.metering.v1 import metering_service_pb2_grpc as mpb_grpc
from tollgate_billing.app import BillingApp
from tollgate_billing.config import Settings
from tollgate_billing.domain import PriceBook
from tollgate_billing.price_book import price_book_from_proto
from tollgate_billing.rebuild import Reconciliation, ReplayStats, compare, replay_outbox
from tollgate_billing.tables import metadata
from tollgate_common.db import create_engine, create_schema
from tollgate_dev.testing import local_postgres_url, postgres_schema, postgres_unavailable_reason

#: gpt-4o-mini-like prices (nano-units per token, already marked up) and a cap of 1000 output tokens.
MODEL = "gpt-4o-mini"
INPUT_PRICE = 200
OUTPUT_PRICE = 700
MAX_OUTPUT = 1000
OTHER_MODEL = "claude-haiku"


def price_book_reply(version: str = "v1", currency: str = "USD") -> mpb.GetPriceBookResponse:
    return mpb.GetPriceBookResponse(
        version=version,
        currency=currency,
        markup_bps=2000,
        prices=[
            mpb.ModelPrice(model=MODEL, input_price_nanos=150, output_price_nanos=580,
                           resale_input_price_nanos=INPUT_PRICE, resale_output_price_nanos=OUTPUT_PRICE,
                           max_output_tokens=MAX_OUTPUT),
            mpb.ModelPrice(model=OTHER_MODEL, input_price_nanos=800, output_price_nanos=4000,
                           resale_input_price_nanos=960, resale_output_price_nanos=4800, max_output_tokens=4096),
        ],
    )


def hold_for(prompt_tokens: int, max_output_tokens: int = 0) -> int:
    return prompt_tokens * INPUT_PRICE + (max_output_tokens or MAX_OUTPUT) * OUTPUT_PRICE


class FakeMetering(mpb_grpc.MeteringServiceServicer):  # type: ignore[misc]
    """Serves a fixed price book, like metering's GetPriceBook; counts the calls."""

    def __init__(self, reply: mpb.GetPriceBookResponse) -> None:
        self.reply = reply
        self.calls = 0

    async def GetPriceBook(self, request: mpb.GetPriceBookRequest, context: object) -> mpb.GetPriceBookResponse:
        self.calls += 1
        return self.reply


@dataclass
class FakeMeteringServer:
    servicer: FakeMetering
    server: grpc.aio.Server
    address: str


async def start_fake_metering(reply: mpb.GetPriceBookResponse | None = None) -> FakeMeteringServer:
    servicer = FakeMetering(reply or price_book_reply())
    server = grpc.aio.server()
    mpb_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return FakeMeteringServer(servicer, server, f"127.0.0.1:{port}")


@dataclass(frozen=True)
class Database:
    """One real database for one test: a SQLite file or a fresh PostgreSQL schema."""

    kind: str
    url: str
    schema: str

    def settings(self, **overrides: object) -> Settings:
        base = Settings(database_url=self.url, database_schema=self.schema, grpc_host="127.0.0.1", grpc_port=0,
                        kafka_bootstrap_servers=None, hold_sweep_seconds=3600)
        return replace(base, **overrides)  # type: ignore[arg-type]


async def sqlite_database(tmp_path: Path, name: str = "billing") -> Database:
    return Database("sqlite", f"sqlite:///{tmp_path}/{name}.db", "billing")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[Database]:
    """A fresh PostgreSQL schema for one test (skips the test with the reason when PostgreSQL does not answer)."""
    url = local_postgres_url()
    if url is None:
        pytest.skip(postgres_unavailable_reason())
    async with postgres_schema(url) as schema:
        yield Database("postgres", url, schema)


async def running_app(settings: Settings) -> BillingApp:
    app = BillingApp(settings)
    await app.start()
    return app


async def eventually(check, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll an async ``check`` until it returns a truthy value (for effects that travel through Kafka)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


class StaticPrices:
    """A fixed price source for application-level tests (the gRPC tests use the fake metering server)."""

    def __init__(self, book: PriceBook | None) -> None:
        self.book = book

    def current(self) -> PriceBook | None:
        return self.book


def static_prices() -> StaticPrices:
    return StaticPrices(price_book_from_proto(price_book_reply()))


class FakeClock:
    """Wall clock under the test's control (hold TTLs)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rated(hold_id: str, account_id: str, key_id: str, price: int) -> usage_pb2.UsageRated:
    return usage_pb2.UsageRated(
        request_id=hold_id, hold_id=hold_id, account_id=account_id, key_id=key_id, model=MODEL,
        currency="USD", resale_price_nanos=price, upstream_cost_nanos=price * 5 // 6,
    )


async def assert_rebuild_equals_live(live: AsyncEngine, tmp_path: Path) -> tuple[ReplayStats, Reconciliation]:
    """Replay billing's log into a fresh SQLite database and assert every read model equals the live one; the
    replay's stats and the comparison come back for a test's own further checks."""
    fresh = create_engine(f"sqlite:///{tmp_path}/replayed.db")
    await create_schema(fresh, metadata)
    try:
        stats = await replay_outbox(live, fresh)
        assert not stats.problems, stats.problems
        report = await compare(live, fresh)
        assert report.equal, report.render()
        return stats, report
    finally:
        await fresh.dispose()
