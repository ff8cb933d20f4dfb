"""Alerts against real databases (SQLite and PostgreSQL): BudgetThresholdCrossed when a capture, an expiry or a
limit change takes a budget's spend to a threshold (once per threshold, period and revision), BalanceLow /
BalanceRestored for the account's "balance below X", each in the transaction of the change, on the outbox, and
rebuilt from the log into the same rows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from billing_support import MODEL, Database, FakeClock, assert_rebuild_equals_live, hold_for, rated, static_prices
from sqlalchemy import select
from tollgate.events.v1 import billing_pb2
from tollgate.events.v1.billing_pb2 import (
    BUDGET_PERIOD_DAILY,
    BUDGET_PERIOD_TOTAL,
    BUDGET_SCOPE_ACCOUNT,
    BUDGET_SCOPE_KEY,
)
from tollgate_billing import errors
from tollgate_billing.alert_admin import AlertAdmin
from tollgate_billing.alerts import check_thresholds, crossed
from tollgate_billing.application import Billing
from tollgate_billing.budget_admin import BudgetAdmin
from tollgate_billing.budgets import period_bounds
from tollgate_billing.tables import messaging, metadata
from tollgate_common.db import create_engine, create_schema, session_maker
from tollgate_common.events import decode

HOLD = hold_for(10, 10)  # the hold of authorize(…, MODEL, 10, 10)
_ALERT_TYPES = (billing_pb2.BudgetThresholdCrossed, billing_pb2.BalanceLow, billing_pb2.BalanceRestored)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp() * 1000)


def test_one_capture_may_cross_several_thresholds_an_exact_hit_counts_and_no_spend_crosses_nothing() -> None:
    assert crossed((50, 80, 100), spent_nanos=1000, limit_nanos=1000, armed_above=0) == [50, 80, 100]
    assert crossed((50, 80, 100), spent_nanos=500, limit_nanos=1000, armed_above=0) == [50]
    assert crossed((50, 80, 100), spent_nanos=499, limit_nanos=1000, armed_above=0) == []
    assert crossed((50, 80, 100), spent_nanos=900, limit_nanos=1000, armed_above=50) == [80]
    assert crossed((50, 80, 100), spent_nanos=0, limit_nanos=0, armed_above=0) == []
    assert crossed((50,), spent_nanos=1, limit_nanos=0, armed_above=0) == [50]  # any spend on a zero limit
    assert check_thresholds([100, 25, 25]) == (25, 100)
    for bad in ([0], [101], list(range(1, 12)), [True]):
        with pytest.raises(errors.InvalidArgument):
            check_thresholds(bad)  # type: ignore[arg-type]


async def _outbox_alerts(billing: Billing) -> list[tuple[str, Any]]:
    """(event id, event) of the alert events on the outbox, in the order they were written."""
    async with billing.engine.connect() as conn:
        rows = (await conn.execute(select(messaging.outbox.c.event_id, messaging.outbox.c.headers,
                                          messaging.outbox.c.value).order_by(messaging.outbox.c.id))).all()
    found = []
    for row in rows:
        ce_type = dict(json.loads(row.headers))["ce_type"]
        event = decode(ce_type, row.value)
        if isinstance(event, _ALERT_TYPES):
            found.append((row.event_id, event))
    return found


class TestAlerts:
    @pytest.fixture
    async def billing(self, db: Database) -> AsyncIterator[Billing]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        clock = FakeClock(_ms("2026-06-10 12:00") / 1000)
        yield Billing(engine, static_prices(), clock=clock, key_cache_seconds=0)
        await engine.dispose()

    async def _key(self, billing: Billing, credits: int) -> tuple[str, str, str]:
        account, _ = await billing.create_account("Acme")
        await billing.add_credits(account.account_id, credits, "seed")
        key = await billing.create_api_key(account.account_id)
        return account.account_id, key.key_id, key.api_key

    async def _usage(self, billing: Billing, account: str, key_id: str, *captures: tuple[str, int]) -> int:
        """Capture holds at these prices in ONE consumer batch; returns the events recorded."""
        async with session_maker(billing.engine).begin() as session:
            return await billing.settle_usage_batch(
                session, [(rated(hold_id, account, key_id, price), hold_id) for hold_id, price in captures])

    async def _replay_equals_live(self, billing: Billing, tmp_path: Path) -> None:
        await assert_rebuild_equals_live(billing.engine, tmp_path)

    async def test_budget_thresholds_cross_once_per_period_and_revision(self, billing: Billing,
                                                                        tmp_path: Path) -> None:
        account, key_id, api_key = await self._key(billing, 10**9)
        budgets = BudgetAdmin(billing)
        budget = await budgets.create_budget(account, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_DAILY, 4 * HOLD)
        assert budget.alert_thresholds == (50, 80, 100) and budget.last_crossed_percent == 0
        for hold_id in "abcd":
            await billing.authorize(api_key, hold_id, MODEL, 10, 10)
        await self._usage(billing, account, key_id, ("a", HOLD))  # 25 %: nothing
        assert await _outbox_alerts(billing) == []
        await self._usage(billing, account, key_id, ("b", HOLD))  # 50 %, exactly
        await self._usage(billing, account, key_id, ("c", HOLD), ("d", HOLD))  # 100 %: 80 and 100 in one batch
        day = period_bounds("daily", "UTC", budgets.now_ms())[0]
        alerts = await _outbox_alerts(billing)
        assert [event_id for event_id, _ in alerts] == [
            f"budget.threshold_crossed:{budget.budget_id}:0:{day}:{p}" for p in (50, 80, 100)]
        last = alerts[-1][1]
        assert (last.account_id, last.scope, last.scope_id, last.period, last.limit_nanos, last.spent_nanos,
                last.crossed_at_unix_ms) == (account, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_DAILY, 4 * HOLD,
                                             4 * HOLD, budgets.now_ms())
        after = await budgets.get_budget(account, budget.budget_id)
        assert (after.last_crossed_percent, after.last_crossed_at_unix_ms,
                after.last_crossed_period_start_unix_ms) == (100, budgets.now_ms(), day)

        clock = billing.clock
        assert isinstance(clock, FakeClock)
        clock.advance(86_400)  # the next day: the spend starts again, so do the thresholds
        for hold_id in "ef":
            await billing.authorize(api_key, hold_id, MODEL, 10, 10)
        await self._usage(billing, account, key_id, ("e", HOLD), ("f", HOLD))  # 50 % of day 2
        next_day = period_bounds("daily", "UTC", budgets.now_ms())[0]
        assert [e for e, _ in await _outbox_alerts(billing)][3:] == [
            f"budget.threshold_crossed:{budget.budget_id}:0:{next_day}:50"]
        # a lower limit is a new revision: the spend (2 holds of 2.5) is already at 50 and 80 % of it, at once
        await budgets.update_budget(account, budget.budget_id, 5 * HOLD // 2)
        assert [e for e, _ in await _outbox_alerts(billing)][4:] == [
            f"budget.threshold_crossed:{budget.budget_id}:1:{next_day}:{p}" for p in (50, 80)]
        # other thresholds: a revision too; 60 % is already passed, 90 % is not
        await budgets.update_budget(account, budget.budget_id, None, [60, 90])
        assert [e for e, _ in await _outbox_alerts(billing)][6:] == [
            f"budget.threshold_crossed:{budget.budget_id}:2:{next_day}:60"]
        shown = await budgets.get_budget(account, budget.budget_id)
        assert (shown.alert_thresholds, shown.limit_nanos, shown.last_crossed_percent) == ((60, 90), 5 * HOLD // 2, 60)
        await self._replay_equals_live(billing, tmp_path)

    async def test_a_budget_without_thresholds_alerts_nothing_and_an_expiry_crosses_too(self, billing: Billing
                                                                                         ) -> None:
        account, key_id, api_key = await self._key(billing, 10**9)
        budgets = BudgetAdmin(billing)
        quiet = await budgets.create_budget(account, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_TOTAL, 2 * HOLD, [])
        loud = await budgets.create_budget(account, BUDGET_SCOPE_ACCOUNT, "", BUDGET_PERIOD_TOTAL, 2 * HOLD, [50])
        await billing.authorize(api_key, "a", MODEL, 10, 10)
        await billing.expire_due_holds(budgets.now_ms() + 3_600_000)  # captured in full by the sweeper: 50 %
        assert [e for e, _ in await _outbox_alerts(billing)] == [f"budget.threshold_crossed:{loud.budget_id}:0:0:50"]
        assert (await budgets.get_budget(account, quiet.budget_id)).last_crossed_percent == 0
        with pytest.raises(errors.InvalidArgument):
            await budgets.update_budget(account, quiet.budget_id, None, [0])

    async def test_balance_low_once_until_a_credit_restores_it(self, billing: Billing, tmp_path: Path) -> None:
        account, key_id, api_key = await self._key(billing, 3 * HOLD + 300)
        alerts = AlertAdmin(billing)
        assert (await alerts.get_balance_alert(account)).threshold_nanos == 0
        setting = await alerts.set_balance_alert(account, 2 * HOLD)
        assert (setting.threshold_nanos, setting.low, setting.revision) == (2 * HOLD, False, 1)
        for hold_id in "abc":
            await billing.authorize(api_key, hold_id, MODEL, 10, 10)
        await self._usage(billing, account, key_id, ("a", HOLD))  # 2 HOLD + 300 left: not below
        assert await _outbox_alerts(billing) == []
        await billing.expire_due_holds(alerts.billing._now_ms() + 3_600_000)  # b and c captured in full
        found = await _outbox_alerts(billing)
        assert [e for e, _ in found] == [f"balance.low:{account}:1"]  # once, though two expiries went below
        low = found[0][1]
        # the balance after the first expiry (the one that went below)
        assert (low.threshold_nanos, low.balance_nanos, low.currency) == (2 * HOLD, HOLD + 300, "USD")
        await billing.add_credits(account, HOLD, "small")  # HOLD + 300: still below
        assert len(await _outbox_alerts(billing)) == 1
        await billing.add_credits(account, HOLD, "enough")  # 2 HOLD + 300: restored, armed again
        assert [e for e, _ in await _outbox_alerts(billing)][1:] == [f"balance.restored:{account}:1"]
        state = await alerts.get_balance_alert(account)
        assert not state.low and state.last_low_at_unix_ms == low.crossed_at_unix_ms
        raised = await alerts.set_balance_alert(account, 3 * HOLD)  # above the balance: low at once
        assert raised.low and raised.revision == 2
        await alerts.set_balance_alert(account, 0)  # off: ends the low state
        assert [e for e, _ in await _outbox_alerts(billing)][2:] == [f"balance.low:{account}:2",
                                                                     f"balance.restored:{account}:2"]
        with pytest.raises(errors.InvalidArgument):
            await alerts.set_balance_alert(account, -1)
        with pytest.raises(errors.AccountNotFound):
            await alerts.set_balance_alert("acct_nobody", 5)
        await self._replay_equals_live(billing, tmp_path)
