"""Requests per minute per key, held in the database inside Authorize's group commit (the holds of the last 60 s
are the sliding window), against real databases: the limit holds for concurrent callers, frees slots as holds age,
answers with the seconds to wait, and holds across two billing replicas on one PostgreSQL (in-memory state would
admit twice the RPM there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from billing_support import MODEL, Database, FakeClock, static_prices
from tollgate_billing import errors
from tollgate_billing.application import Billing
from tollgate_billing.tables import metadata
from tollgate_common.db import create_engine, create_schema

NANOS = 10**9


async def _fire(billing: Billing, api_key: str, prefix: str, n: int) -> list[int | None]:
    """n concurrent Authorize calls; None for each admitted, the Retry-After seconds for each refused."""

    async def one(i: int) -> int | None:
        try:
            await billing.authorize(api_key, f"{prefix}-{i}", MODEL, 10, 10)
            return None
        except errors.RateLimited as limited:
            assert limited.reason == "rate_limited"
            return limited.retry_after

    return list(await asyncio.gather(*(one(i) for i in range(n))))


class TestRateLimit:
    @pytest.fixture
    async def billing(self, db: Database) -> AsyncIterator[Billing]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        yield Billing(engine, static_prices(), clock=FakeClock())
        await engine.dispose()

    async def _key(self, billing: Billing, rpm: int) -> str:
        account, _ = await billing.create_account("Acme")
        await billing.add_credits(account.account_id, 10 * NANOS, "seed")
        return (await billing.create_api_key(account.account_id, rate_limit_rpm=rpm)).api_key

    async def test_concurrent_callers_get_the_rpm_and_the_seconds_until_a_slot_frees(self, billing: Billing) -> None:
        api_key = await self._key(billing, 5)
        outcomes = await _fire(billing, api_key, "a", 20)
        assert outcomes.count(None) == 5
        assert {o for o in outcomes if o is not None} == {60}  # every hold is brand new: a minute to wait
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        clock.advance(45)
        with pytest.raises(errors.RateLimited) as still:
            await billing.authorize(api_key, "b", MODEL, 10, 10)
        assert still.value.retry_after == 15
        await billing.authorize(api_key, "a-0", MODEL, 10, 10)  # a retried request is a replay, not a new slot
        clock.advance(15.001)  # the first five leave the window
        again = await _fire(billing, api_key, "c", 8)
        assert again.count(None) == 5

    async def test_keys_without_an_rpm_are_not_limited(self, billing: Billing) -> None:
        api_key = await self._key(billing, 0)
        assert (await _fire(billing, api_key, "free", 50)).count(None) == 50

    async def test_two_billing_replicas_on_one_database_admit_the_rpm_once(self, db: Database) -> None:
        engines = [create_engine(db.url, schema=db.schema) for _ in range(2)]
        await create_schema(engines[0], metadata, schema=db.schema)
        clock = FakeClock()
        one, two = (Billing(engine, static_prices(), clock=clock) for engine in engines)
        try:
            api_key = await self._key(one, 10)
            first, second = await asyncio.gather(_fire(one, api_key, "one", 30), _fire(two, api_key, "two", 30))
            assert first.count(None) + second.count(None) == 10
        finally:
            for engine in engines:
                await engine.dispose()
