"""A request a provider may have served without its usage being known (UsageRated.usage_unknown: a timeout) is
charged per BILLING_UNKNOWN_USAGE_CHARGE — none, the prompt estimate (the default), or the full hold — instead
of being released at zero; on SQLite and PostgreSQL, and the same after a rebuild from the events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from billing_support import MODEL, Database, FakeClock, hold_for, rated, static_prices
from sqlalchemy import select
from tollgate_billing.application import Billing
from tollgate_billing.config import Settings
from tollgate_billing.domain import UnknownUsageCharge
from tollgate_billing.rebuild import compare, replay_outbox
from tollgate_billing.tables import holds, metadata
from tollgate_common.config import ConfigError
from tollgate_common.db import create_engine, create_schema, session_maker

NANOS = 10**9
PROMPT_PRICE = 1_234  # what metering rated the prompt estimate at


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[object]:
    engine = create_engine(database.url, schema=database.schema)
    await create_schema(engine, metadata, schema=database.schema)
    yield engine
    await engine.dispose()


async def _timed_out(billing: Billing, engine: object, request_id: str, *, expire_first: bool = False,
                     prompt_estimate: int = 100) -> int:
    """Authorize a request, then settle it with a usage-unknown event; returns what the account paid."""
    account, _ = await billing.create_account("Acme")
    await billing.add_credits(account.account_id, NANOS, "seed")
    key = await billing.create_api_key(account.account_id)
    await billing.authorize(key.api_key, request_id, MODEL, 100, 0)
    if expire_first:
        billing.clock.advance(billing.hold_ttl_seconds + 1)  # type: ignore[attr-defined]
        assert await billing.expire_due_holds() == 1
    event = rated(request_id, account.account_id, key.key_id, PROMPT_PRICE)
    event.usage_unknown = True
    event.usage.prompt_tokens = prompt_estimate
    async with session_maker(engine).begin() as session:  # type: ignore[arg-type]
        await billing.settle_usage(session, event, request_id)
    wallet = await billing.get_balance(account.account_id)
    assert wallet.held_nanos == 0
    return NANOS - wallet.balance_nanos


@pytest.mark.parametrize(("mode", "charged"), [
    (UnknownUsageCharge.NONE, 0),
    (UnknownUsageCharge.PROMPT, PROMPT_PRICE),
    (UnknownUsageCharge.HOLD, hold_for(100)),
])
async def test_unknown_usage_is_charged_per_the_setting(engine: object, mode: UnknownUsageCharge,
                                                        charged: int, tmp_path: Path) -> None:
    billing = Billing(engine, static_prices(), clock=FakeClock(), unknown_usage_charge=mode)  # type: ignore[arg-type]
    assert await _timed_out(billing, engine, "req_open") == charged
    # The same when the hold had expired (captured in full) before the event came: the refund leaves that charge.
    assert await _timed_out(billing, engine, "req_expired", expire_first=True) == charged
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        rows = {r.hold_id: (r.status, r.captured_nanos, r.refunded_nanos)
                for r in await conn.execute(select(holds.c.hold_id, holds.c.status, holds.c.captured_nanos,
                                                   holds.c.refunded_nanos))}
    assert rows["req_open"] == ("captured", charged, 0)
    assert rows["req_expired"] == ("reconciled", hold_for(100), hold_for(100) - charged)
    # Without a prompt estimate (reconciled from the router's attempts, which do not know it) `prompt` charges the
    # hold, the only bound known; the other settings are unchanged.
    no_estimate = await _timed_out(billing, engine, "req_no_estimate", prompt_estimate=0)
    assert no_estimate == (hold_for(100) if mode is UnknownUsageCharge.PROMPT else charged)
    # Every charge is an event: the tables rebuilt from them are the live ones.
    rebuilt = create_engine(f"sqlite:///{tmp_path}/rebuilt.db")
    await create_schema(rebuilt, metadata)
    try:
        stats = await replay_outbox(engine, rebuilt)  # type: ignore[arg-type]
        assert not stats.problems
        report = await compare(engine, rebuilt)  # type: ignore[arg-type]
        assert report.equal, report.render()
    finally:
        await rebuilt.dispose()


def test_the_setting_defaults_to_prompt_and_refuses_other_values() -> None:
    assert Settings.from_env({}).unknown_usage_charge is UnknownUsageCharge.PROMPT
    assert Settings.from_env({"BILLING_UNKNOWN_USAGE_CHARGE": "HOLD"}).unknown_usage_charge is UnknownUsageCharge.HOLD
    with pytest.raises(ConfigError, match="BILLING_UNKNOWN_USAGE_CHARGE"):
        Settings.from_env({"BILLING_UNKNOWN_USAGE_CHARGE": "all"})
