"""Authorize's group commit retries a caller's transaction that PostgreSQL aborted (deadlock, serialization), as
happens between billing replicas on one database, instead of answering the caller 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from billing_support import MODEL, Database, hold_for, postgres_database, static_prices
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from tollgate_billing import hold_writer
from tollgate_billing.application import Billing
from tollgate_billing.tables import metadata
from tollgate_common.db import create_engine, create_schema

NANOS = 10**9

pytestmark = pytest.mark.postgres


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    async with postgres_database() as db:
        yield db


async def _deadlock_with_another_replica(db: Database, billing: Billing, api_key: str, account_id: str,
                                         key_id: str, request_id: str) -> str:
    """Another replica's transaction locks the wallet, waits for Authorize to lock the key row, then takes the
    key row too: PostgreSQL finds the cycle and aborts the transaction whose deadlock check runs first, Authorize's
    (it waited first, with the default 1 s deadlock_timeout; the other one's is raised to 30 s)."""
    other = create_engine(db.url, schema=db.schema)
    try:
        async with other.connect() as conn:
            await conn.execute(text("BEGIN"))
            await conn.execute(text("SET LOCAL deadlock_timeout = '30s'"))
            await conn.execute(text("UPDATE wallets SET held_nanos = held_nanos WHERE account_id = :a"),
                               {"a": account_id})
            authorize = asyncio.create_task(billing.authorize(api_key, request_id, MODEL, 100, 0))
            await asyncio.sleep(0.5)  # Authorize holds the key row and waits for the wallet
            assert not authorize.done()
            try:
                await conn.execute(text("UPDATE api_keys SET held_nanos = held_nanos WHERE key_id = :k"),
                                   {"k": key_id})
            finally:
                await conn.execute(text("COMMIT"))
            result = await authorize
            return result.hold_id
    finally:
        await other.dispose()


async def test_a_deadlocked_hold_transaction_is_retried_not_failed(db: Database,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(db.url, schema=db.schema)
    await create_schema(engine, metadata, schema=db.schema)
    try:
        billing = Billing(engine, static_prices(), key_cache_seconds=0.0)
        account, _ = await billing.create_account("Acme")
        await billing.add_credits(account.account_id, NANOS, "seed")
        key = await billing.create_api_key(account.account_id)

        hold_id = await _deadlock_with_another_replica(db, billing, key.api_key, account.account_id, key.key_id,
                                                       "req_deadlock")
        assert hold_id == "req_deadlock"
        wallet = await billing.get_balance(account.account_id)
        assert (wallet.balance_nanos, wallet.held_nanos) == (NANOS, hold_for(100))

        # Without the retry the same deadlock reaches the caller (what the gRPC layer answers 503).
        monkeypatch.setattr(hold_writer, "RETRIES", 0)
        with pytest.raises(DBAPIError):
            await _deadlock_with_another_replica(db, billing, key.api_key, account.account_id, key.key_id,
                                                 "req_unretried")
    finally:
        await engine.dispose()
