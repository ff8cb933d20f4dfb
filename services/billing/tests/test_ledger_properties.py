"""Property: through ANY sequence of credits, holds, captures, expiries and late usage, the books stay right.

Runs the real application, projections and SQLite (a fresh file per example) and checks after every step:
the ledger sums to zero (and every transaction does), the wallet balance equals the sum of its postings and a
simple reference model, held equals the open holds and is never negative, available never drops below zero, and a
key with a limit never has more than its limit spent or held. At the end the outbox, replayed into an empty
database, rebuilds exactly the same state.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field

from billing_support import MODEL, FakeClock, rated, static_prices
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_billing import errors
from tollgate_billing.application import Billing
from tollgate_billing.rebuild import compare, replay_outbox
from tollgate_billing.tables import api_keys, holds, ledger_postings, metadata, wallets
from tollgate_common.db import create_engine, create_schema, session_maker

KEY_LIMIT = 120_000

credit = st.tuples(st.just("credit"), st.integers(1, 200_000))
authorize = st.tuples(st.just("authorize"), st.integers(0, 60), st.integers(1, 60), st.booleans())
usage = st.tuples(st.just("usage"), st.integers(0, 50), st.integers(0, 100), st.booleans())
expire = st.tuples(st.just("expire"))
operations = st.lists(st.one_of(credit, authorize, usage, expire), min_size=1, max_size=30)


@dataclass
class Model:
    """What the balance must be, computed without the database."""

    balance: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # hold id -> amount
    status: dict[str, str] = field(default_factory=dict)
    captured: dict[str, int] = field(default_factory=dict)


async def _check_invariants(engine: AsyncEngine, account_id: str, model: Model) -> None:
    async with engine.connect() as conn:
        total = await conn.execute(select(func.coalesce(func.sum(ledger_postings.c.amount_nanos), 0)))
        assert total.scalar_one() == 0
        unbalanced = (await conn.execute(
            select(ledger_postings.c.transaction_id).group_by(ledger_postings.c.transaction_id)
            .having(func.sum(ledger_postings.c.amount_nanos) != 0))).all()
        assert unbalanced == []
        wallet_sum = (await conn.execute(
            select(func.coalesce(func.sum(ledger_postings.c.amount_nanos), 0))
            .where(ledger_postings.c.ledger_account == f"wallet:{account_id}"))).scalar_one()
        open_sum = (await conn.execute(
            select(func.coalesce(func.sum(holds.c.amount_nanos), 0)).where(holds.c.status == "open"))).scalar_one()
        keys = (await conn.execute(select(api_keys.c.has_limit, api_keys.c.limit_nanos, api_keys.c.usage_nanos,
                                          api_keys.c.held_nanos))).all()
        wallet = (await conn.execute(select(wallets).where(wallets.c.account_id == account_id))).one()
    assert wallet.balance_nanos == wallet_sum == model.balance
    assert wallet.held_nanos == open_sum >= 0
    assert wallet.balance_nanos - wallet.held_nanos >= 0
    for has_limit, limit, used, held in keys:
        assert held >= 0
        if has_limit:
            assert used + held <= limit


async def _scenario(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/live.db")
        await create_schema(engine, metadata)
        clock = FakeClock()
        billing = Billing(engine, static_prices(), hold_ttl_seconds=600, clock=clock)
        sessions = session_maker(engine)
        try:
            account, _ = await billing.create_account("Prop")
            account_id = account.account_id
            plain = await billing.create_api_key(account_id)
            limited = await billing.create_api_key(account_id, has_limit=True, limit_nanos=KEY_LIMIT)
            key_of: dict[str, str] = {}
            model = Model()
            placed: list[str] = []
            for step, op in enumerate(ops):
                kind = op[0]
                if kind == "credit":
                    await billing.add_credits(account_id, int(op[1]), f"c{step}")  # type: ignore[call-overload]
                    model.balance += int(op[1])  # type: ignore[call-overload]
                elif kind == "authorize":
                    _, prompt, max_out, use_limited = op
                    key = limited if use_limited else plain
                    try:
                        result = await billing.authorize(key.api_key, f"req_{step}", MODEL, prompt, max_out)  # type: ignore[arg-type]
                    except (errors.InsufficientBalance, errors.KeyLimitExceeded):
                        continue
                    placed.append(result.hold_id)
                    key_of[result.hold_id] = key.key_id
                    model.holds[result.hold_id] = result.hold_amount_nanos
                    model.status[result.hold_id] = "open"
                elif kind == "usage" and placed:
                    hold_id = placed[int(op[1]) % len(placed)]  # type: ignore[call-overload]
                    amount = model.holds[hold_id]
                    price = amount * int(op[2]) // 100  # type: ignore[call-overload]
                    event = rated(hold_id, account_id, key_of[hold_id], price)
                    batch = [(event, f"u{step}"), (event, f"u{step}-retry")] if op[3] else [(event, f"u{step}")]
                    async with sessions.begin() as session:  # a retry in the same batch is charged once
                        await billing.settle_usage_batch(session, batch)
                    if model.status[hold_id] == "open":
                        model.balance -= price
                        model.status[hold_id] = "captured"
                    elif model.status[hold_id] == "expired":
                        model.balance += max(0, amount - price)
                        model.status[hold_id] = "reconciled"
                elif kind == "expire":
                    clock.advance(601)
                    await billing.expire_due_holds()
                    for hold_id, status in model.status.items():
                        if status == "open":
                            model.status[hold_id] = "expired"
                            model.balance -= model.holds[hold_id]
                await _check_invariants(engine, account_id, model)

            rebuilt = create_engine(f"sqlite:///{tmp}/rebuilt.db")
            await create_schema(rebuilt, metadata)
            try:
                stats = await replay_outbox(engine, rebuilt)
                assert not stats.problems, stats.problems
                report = await compare(engine, rebuilt)
                assert report.equal, report.render()
            finally:
                await rebuilt.dispose()
        finally:
            await engine.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_books_stay_balanced_through_any_sequence(ops: list[tuple[object, ...]]) -> None:
    asyncio.run(_scenario(ops))
