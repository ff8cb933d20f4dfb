"""Budgets (spend limits per key, team, project and account, per period) against real databases (SQLite and
PostgreSQL): decided in Authorize's group commit with the hold arithmetic, moved by captures, expiries and
reconciliations, turned over on the period boundary in the account's time zone, managed through BudgetAdmin, and
rebuilt from the log into the same rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from billing_support import (
    MODEL,
    Database,
    FakeClock,
    assert_rebuild_equals_live,
    hold_for,
    rated,
    static_prices,
)
from tollgate.events.v1.billing_pb2 import (
    BUDGET_PERIOD_DAILY,
    BUDGET_PERIOD_MONTHLY,
    BUDGET_PERIOD_TOTAL,
    BUDGET_PERIOD_WEEKLY,
    BUDGET_SCOPE_ACCOUNT,
    BUDGET_SCOPE_KEY,
    BUDGET_SCOPE_PROJECT,
    BUDGET_SCOPE_TEAM,
    GROUP_KIND_PROJECT,
    GROUP_KIND_TEAM,
)
from tollgate_billing import errors
from tollgate_billing.application import Billing
from tollgate_billing.budget_admin import BudgetAdmin
from tollgate_billing.budgets import period_bounds
from tollgate_billing.group_admin import GroupAdmin
from tollgate_billing.grpc_budgets import budget_message
from tollgate_billing.key_admin import KeyAdmin
from tollgate_billing.tables import metadata
from tollgate_common.db import create_engine, create_schema, session_maker

NANOS = 10**9
HOLD = hold_for(10, 10)  # the hold of authorize(…, MODEL, 10, 10)


def _ms(text: str, zone: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def test_periods_turn_over_at_local_midnight_monday_and_the_first() -> None:
    at = _ms("2026-03-29 12:00", "Europe/Paris")  # a Sunday, the day summer time starts (23 hours long)
    assert period_bounds("daily", "Europe/Paris", at) == (_ms("2026-03-29 00:00", "Europe/Paris"),
                                                        _ms("2026-03-30 00:00", "Europe/Paris"))
    day = period_bounds("daily", "Europe/Paris", at)
    assert day[1] - day[0] == 23 * 3600 * 1000
    assert period_bounds("weekly", "Europe/Paris", at) == (_ms("2026-03-23 00:00", "Europe/Paris"),
                                                         _ms("2026-03-30 00:00", "Europe/Paris"))
    assert period_bounds("monthly", "Europe/Paris", at) == (_ms("2026-03-01 00:00", "Europe/Paris"),
                                                          _ms("2026-04-01 00:00", "Europe/Paris"))
    assert period_bounds("monthly", "UTC", _ms("2026-12-31 23:59")) == (_ms("2026-12-01 00:00"),
                                                                       _ms("2027-01-01 00:00"))
    assert period_bounds("total", "UTC", at) == (0, 0)
    # 23:30 UTC on the 1st is already the 2nd in Tokyo: another day there, the same one in UTC
    late = _ms("2026-05-01 23:30")
    assert period_bounds("daily", "Asia/Tokyo", late)[0] == _ms("2026-05-02 00:00", "Asia/Tokyo")
    assert period_bounds("daily", "UTC", late)[0] == _ms("2026-05-01 00:00")


class TestBudgets:
    @pytest.fixture
    async def billing(self, db: Database) -> AsyncIterator[Billing]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        clock = FakeClock(_ms("2026-06-10 12:00") / 1000)
        yield Billing(engine, static_prices(), clock=clock, key_cache_seconds=0)
        await engine.dispose()

    async def _team_key(self, billing: Billing, *, time_zone: str = "") -> tuple[str, str, str]:
        account, _ = await billing.create_account("Acme", time_zone=time_zone)
        await billing.add_credits(account.account_id, 100 * NANOS, "seed")
        await GroupAdmin(billing).create_group(account.account_id, GROUP_KIND_TEAM, "ML", "ml")
        await GroupAdmin(billing).create_group(account.account_id, GROUP_KIND_PROJECT, "Bot", "bot")
        key = await billing.create_api_key(account.account_id, team="ml", project="bot")
        return account.account_id, key.key_id, key.api_key

    async def _usage(self, billing: Billing, hold_id: str, account: str, key_id: str, price: int) -> None:
        async with session_maker(billing.engine).begin() as session:
            await billing.settle_usage(session, rated(hold_id, account, key_id, price), hold_id)

    async def test_concurrent_holds_on_a_team_budget_never_exceed_it(self, billing: Billing) -> None:
        account, _, api_key = await self._team_key(billing)
        budgets = BudgetAdmin(billing)
        team = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_MONTHLY, 7 * HOLD + 1)

        async def one(i: int) -> str:
            try:
                await billing.authorize(api_key, f"req_{i}", MODEL, 10, 10)
                return "ok"
            except errors.BudgetExceeded as refused:
                assert (refused.scope, refused.scope_id, refused.budget_id) == ("team", "ml", team.budget_id)
                assert team.budget_id in str(refused) and "team 'ml'" in str(refused)
                return refused.reason

        outcomes = await asyncio.gather(*(one(i) for i in range(60)))
        assert outcomes.count("ok") == 7 and outcomes.count("budget_exceeded") == 53
        now = budgets.now_ms()
        after = await budgets.get_budget(account, team.budget_id)
        assert (after.held_nanos, after.spent_at(now), after.remaining_at(now)) == (7 * HOLD, 0, 1)
        wallet = await billing.get_balance(account)
        assert wallet.held_nanos == 7 * HOLD  # the refused ones held nothing anywhere

    async def test_every_budget_of_the_chain_counts_and_the_tightest_refuses(self, billing: Billing) -> None:
        account, key_id, api_key = await self._team_key(billing)
        budgets = BudgetAdmin(billing)
        wide = await budgets.create_budget(account, BUDGET_SCOPE_ACCOUNT, "", BUDGET_PERIOD_TOTAL, 100 * HOLD)
        assert wide.scope_id == account
        project = await budgets.create_budget(account, BUDGET_SCOPE_PROJECT, "bot", BUDGET_PERIOD_WEEKLY, 50 * HOLD)
        own = await budgets.create_budget(account, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_DAILY, 2 * HOLD)
        other = await billing.create_api_key(account, team="ml")  # same team, another project, no key budget
        await billing.authorize(api_key, "a", MODEL, 10, 10)
        await billing.authorize(api_key, "b", MODEL, 10, 10)
        with pytest.raises(errors.BudgetExceeded) as refused:
            await billing.authorize(api_key, "c", MODEL, 10, 10)
        assert (refused.value.scope, refused.value.budget_id) == ("key", own.budget_id)
        await billing.authorize(other.api_key, "d", MODEL, 10, 10)  # not in the key's or the project's budget
        now = budgets.now_ms()
        held = {b.budget_id: b.held_nanos for b in await budgets.list_budgets(account)}
        assert held == {wide.budget_id: 3 * HOLD, project.budget_id: 2 * HOLD, own.budget_id: 2 * HOLD}

        info = await billing.get_key_info(api_key)
        assert info.tightest is not None
        assert (info.tightest.scope, info.tightest.budget_id, info.tightest.remaining_nanos,
                info.tightest.resets_at_unix_ms) == ("key", own.budget_id, 0, _ms("2026-06-11 00:00"))
        other_info = await billing.get_key_info(other.api_key)
        assert other_info.tightest is not None and other_info.tightest.budget_id == wide.budget_id
        assert other_info.tightest.remaining_nanos == 97 * HOLD
        assert budget_message(await budgets.get_budget(account, own.budget_id), now).remaining_nanos == 0

    async def test_capture_expiry_and_reconciliation_move_held_to_spent(self, billing: Billing) -> None:
        account, key_id, api_key = await self._team_key(billing)
        budgets = BudgetAdmin(billing)
        team = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_DAILY, 3 * HOLD)
        for hold_id in ("a", "b", "c"):
            await billing.authorize(api_key, hold_id, MODEL, 10, 10)
        with pytest.raises(errors.BudgetExceeded):
            await billing.authorize(api_key, "small", MODEL, 10, 5)
        await self._usage(billing, "a", account, key_id, 1_000)  # captured at 1,000: the rest released
        now = budgets.now_ms()
        after = await budgets.get_budget(account, team.budget_id)
        assert (after.held_nanos, after.spent_at(now)) == (2 * HOLD, 1_000)
        small = hold_for(10, 5)
        assert HOLD - 1_000 >= small  # left now; before the release nothing was
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        clock.advance(100)
        await billing.authorize(api_key, "small", MODEL, 10, 5)
        assert await billing.expire_due_holds(now + 650_000) == 2  # b and c, captured in full; "small" still open
        after = await budgets.get_budget(account, team.budget_id)
        assert (after.held_nanos, after.spent_nanos) == (small, 1_000 + 2 * HOLD)
        await self._usage(billing, "c", account, key_id, 300)  # late usage: the difference refunded
        after = await budgets.get_budget(account, team.budget_id)
        assert (after.held_nanos, after.spent_nanos) == (small, 1_000 + HOLD + 300)

    async def test_a_daily_budget_starts_again_at_midnight_in_the_accounts_time_zone(self, billing: Billing) -> None:
        account, key_id, api_key = await self._team_key(billing, time_zone="America/New_York")
        budgets = BudgetAdmin(billing)
        daily = await budgets.create_budget(account, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_DAILY, HOLD)
        await billing.authorize(api_key, "a", MODEL, 10, 10)
        await self._usage(billing, "a", account, key_id, HOLD)
        with pytest.raises(errors.BudgetExceeded):
            await billing.authorize(api_key, "b", MODEL, 10, 10)
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        # 12:00 UTC is 08:00 in New York: 15 h later is 03:00 UTC (a new day in UTC), still 23:00 in New York
        clock.advance(15 * 3600)
        with pytest.raises(errors.BudgetExceeded):
            await billing.authorize(api_key, "c", MODEL, 10, 10)
        clock.advance(2 * 3600)  # 01:00 in New York: the next day
        await billing.authorize(api_key, "d", MODEL, 10, 10)
        now = budgets.now_ms()
        shown = budget_message(await budgets.get_budget(account, daily.budget_id), now)
        assert (shown.spent_nanos, shown.held_nanos, shown.time_zone) == (0, HOLD, "America/New_York")
        assert shown.period_start_unix_ms == _ms("2026-06-11 00:00", "America/New_York")
        await self._usage(billing, "d", account, key_id, 400)  # counted in the new day
        after = await budgets.get_budget(account, daily.budget_id)
        assert (after.spent_at(now), after.period_start_unix_ms) == (400, shown.period_start_unix_ms)

    async def test_admin_creates_lists_updates_and_deletes_budgets(self, billing: Billing) -> None:
        account, key_id, api_key = await self._team_key(billing)
        theirs, _ = await billing.create_account("Theirs")
        budgets = BudgetAdmin(billing)
        team = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_MONTHLY, HOLD)
        with pytest.raises(errors.BudgetExists):
            await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_MONTHLY, 5)
        weekly = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_WEEKLY, 5 * HOLD)
        assert [b.budget_id for b in await budgets.list_budgets(account)] == [team.budget_id, weekly.budget_id]
        for scope, scope_id, missing in ((BUDGET_SCOPE_TEAM, "ghost", errors.GroupNotFound),
                                         (BUDGET_SCOPE_PROJECT, "ghost", errors.GroupNotFound),
                                         (BUDGET_SCOPE_KEY, "key_ghost", errors.KeyNotFound)):
            with pytest.raises(missing):
                await budgets.create_budget(account, scope, scope_id, BUDGET_PERIOD_DAILY, 1)
        with pytest.raises(errors.KeyNotFound):  # another account's key is not a scope here
            await budgets.create_budget(theirs.account_id, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_DAILY, 1)
        for scope, period, limit in ((0, BUDGET_PERIOD_DAILY, 1), (BUDGET_SCOPE_TEAM, 0, 1),
                                     (BUDGET_SCOPE_TEAM, BUDGET_PERIOD_DAILY, -1)):
            with pytest.raises(errors.InvalidArgument):
                await budgets.create_budget(account, scope, "ml", period, limit)
        with pytest.raises(errors.BudgetNotFound):
            await budgets.get_budget(theirs.account_id, team.budget_id)
        with pytest.raises(errors.AccountNotFound):
            await budgets.list_budgets("acct_ghost")

        with pytest.raises(errors.BudgetExceeded):
            await billing.authorize(api_key, "big", MODEL, 10, 1000)
        raised = await budgets.update_budget(account, team.budget_id, 10 * HOLD)
        assert (raised.limit_nanos, raised.revision) == (10 * HOLD, 1)
        await billing.authorize(api_key, "big", MODEL, 10, 10)  # the new limit at once
        same = await budgets.update_budget(account, team.budget_id, 10 * HOLD)
        assert same.revision == 1
        deleted = await budgets.delete_budget(account, team.budget_id)
        assert deleted.held_nanos == HOLD
        with pytest.raises(errors.BudgetNotFound):
            await budgets.get_budget(account, team.budget_id)
        await self._usage(billing, "big", account, key_id, 500)  # its capture touches no deleted budget
        assert (await budgets.get_budget(account, weekly.budget_id)).spent_nanos == 500
        with pytest.raises(errors.BudgetNotFound):
            await budgets.delete_budget(account, team.budget_id)

    async def test_budgets_rebuild_from_the_log(self, billing: Billing, tmp_path: Path) -> None:
        account, key_id, api_key = await self._team_key(billing, time_zone="Europe/Paris")
        budgets = BudgetAdmin(billing)
        team = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_DAILY, 10 * HOLD)
        gone = await budgets.create_budget(account, BUDGET_SCOPE_KEY, key_id, BUDGET_PERIOD_TOTAL, 10 * HOLD)
        await budgets.create_budget(account, BUDGET_SCOPE_ACCOUNT, "", BUDGET_PERIOD_MONTHLY, 10 * HOLD)
        for hold_id in ("a", "b", "c", "e"):
            await billing.authorize(api_key, hold_id, MODEL, 10, 10)
        await self._usage(billing, "a", account, key_id, 700)
        await budgets.update_budget(account, team.budget_id, 9 * HOLD)
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        clock.advance(86_400)  # the next day: "b" captured in it, "c" expires in it and is reconciled
        await self._usage(billing, "b", account, key_id, 300)
        await billing.expire_due_holds(budgets.now_ms() + 3_600_000)
        await self._usage(billing, "c", account, key_id, 200)
        await budgets.delete_budget(account, gone.budget_id)
        await billing.authorize(api_key, "f", MODEL, 10, 10)
        _, report = await assert_rebuild_equals_live(billing.engine, tmp_path)
        assert {t.name: t.live_rows for t in report.tables}["budgets"] == 2
        after = await budgets.get_budget(account, team.budget_id)
        # day 2: b 300 + c expired in full (HOLD) then refunded to 200; a's 700 was day 1's; e expired (HOLD)
        assert after.spent_nanos == 300 + 200 + HOLD
        assert after.held_nanos == HOLD  # f

    async def test_keys_moved_to_another_team_release_the_budget_they_held_against(self, billing: Billing) -> None:
        account, key_id, api_key = await self._team_key(billing)
        await GroupAdmin(billing).create_group(account, GROUP_KIND_TEAM, "Ops", "ops")
        budgets = BudgetAdmin(billing)
        ml = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ml", BUDGET_PERIOD_TOTAL, 10 * HOLD)
        ops = await budgets.create_budget(account, BUDGET_SCOPE_TEAM, "ops", BUDGET_PERIOD_TOTAL, 10 * HOLD)
        await billing.authorize(api_key, "a", MODEL, 10, 10)
        await KeyAdmin(billing).update_key(account, key_id, team="ops")
        await billing.authorize(api_key, "b", MODEL, 10, 10)
        await self._usage(billing, "a", account, key_id, 100)
        await self._usage(billing, "b", account, key_id, 200)
        got = {b.budget_id: (b.held_nanos, b.spent_nanos) for b in await budgets.list_budgets(account)}
        assert got == {ml.budget_id: (0, 100), ops.budget_id: (0, 200)}
