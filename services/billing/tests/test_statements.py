"""Promotional credits, refunds, credit notes and monthly statements against real databases (SQLite and
PostgreSQL, through conftest's ``db``): money in exact nano-units, every change an event, the rebuild equal."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from billing_support import MODEL, OTHER_MODEL, Database, FakeClock, assert_rebuild_equals_live, rated, static_prices
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import billing_pb2
from tollgate.events.v1.billing_pb2 import GROUP_KIND_PROJECT
from tollgate_billing import errors
from tollgate_billing.application import Billing
from tollgate_billing.credit_admin import CreditAdmin
from tollgate_billing.group_admin import GroupAdmin
from tollgate_billing.statement_admin import StatementAdmin
from tollgate_billing.statements import adds_up
from tollgate_billing.tables import messaging, metadata
from tollgate_common.db import create_engine, create_schema, session_maker

NANOS = 10**9
#: FakeClock's start, 2023-11-14 22:13:20 UTC: the tests' month is November 2023.
NOV_END = 1_701_388_800  # 2023-12-01 00:00 UTC
DAY = 86_400


class World:
    def __init__(self, engine: AsyncEngine, billing: Billing, clock: FakeClock) -> None:
        self.engine = engine
        self.billing = billing
        self.clock = clock
        self.credits = CreditAdmin(billing)
        self.statements = StatementAdmin(billing)
        self.sessions = session_maker(engine)

    async def account(self, paid: int = 0, time_zone: str = "", project: str = "") -> tuple[str, str, str]:
        account, _ = await self.billing.create_account("Acme", time_zone=time_zone)
        if paid:
            await self.billing.add_credits(account.account_id, paid, "paid-1")
        if project:
            await GroupAdmin(self.billing).create_group(account.account_id, GROUP_KIND_PROJECT, project, project)
        key = await self.billing.create_api_key(account.account_id, project=project)
        return account.account_id, key.key_id, key.api_key

    async def serve(self, api_key: str, account_id: str, key_id: str, request_id: str, price: int,
                    model: str = MODEL, project: str = "") -> None:
        """One request: Authorize (the hold), then its rated usage captured the way the consumer does."""
        await self.billing.authorize(api_key, request_id, model, 100, 1000)
        usage = rated(request_id, account_id, key_id, price)
        usage.model, usage.project = model, project
        async with self.sessions.begin() as session:
            await self.billing.settle_usage(session, usage, request_id)

    async def balance(self, account_id: str) -> int:
        return (await self.billing.get_balance(account_id)).balance_nanos

    async def outbox(self) -> list[tuple[str, bytes]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(messaging.outbox.c.event_id, messaging.outbox.c.value)
                                      .order_by(messaging.outbox.c.id))
            return [(r[0], bytes(r[1])) for r in rows]

    async def assert_rebuild_equal(self, tmp_path: Path) -> None:
        await assert_rebuild_equals_live(self.engine, tmp_path)


@pytest.fixture
async def w(db: Database) -> AsyncIterator[World]:
    engine = create_engine(db.url, schema=db.schema)
    await create_schema(engine, metadata, schema=db.schema)
    clock = FakeClock()
    yield World(engine, Billing(engine, static_prices(), hold_ttl_seconds=600, key_cache_seconds=0, clock=clock),
                clock)
    await engine.dispose()


# --- promotional credits ----------------------------------------------------------------------------------------


class TestPromotionalCredits:
    async def test_promo_is_spent_first_and_what_is_left_expires_once(self, w: World) -> None:
        account_id, key_id, api_key = await w.account(paid=NANOS)
        expires = int((w.clock.now + DAY) * 1000)
        await w.billing.add_credits(account_id, 2 * NANOS, "promo-1", "welcome", credit_kind="promotional",
                                    expires_at_unix_ms=expires)
        await w.serve(api_key, account_id, key_id, "req_1", NANOS // 2)
        assert await w.balance(account_id) == 2 * NANOS + NANOS // 2
        assert await w.credits.expire_due_promotions() == 0  # not due yet
        w.clock.advance(DAY)
        assert await w.credits.expire_due_promotions() == 1
        # the charge came out of the promo: 1.5 of its 2 were left and expired; the paid 1 is intact
        assert await w.balance(account_id) == NANOS
        assert await w.credits.expire_due_promotions() == 0  # exactly once
        expired = [billing_pb2.PromoCreditExpired.FromString(v) for i, v in await w.outbox()
                   if i.startswith("promo.expired:")]
        assert [e.expired_nanos for e in expired] == [NANOS + NANOS // 2]
        assert expired[0].transaction.kind == "promo_expired"

    async def test_a_promo_spent_in_full_expires_nothing_and_charges_after_expiry_are_paid(self, w: World) -> None:
        account_id, key_id, api_key = await w.account(paid=NANOS)
        expires = int((w.clock.now + 60) * 1000)
        await w.billing.add_credits(account_id, 300, "promo", credit_kind="promotional", expires_at_unix_ms=expires)
        await w.serve(api_key, account_id, key_id, "req_1", 500)  # 300 promo + 200 paid
        w.clock.advance(120)
        await w.serve(api_key, account_id, key_id, "req_2", 400)  # after expiry: paid only
        assert await w.credits.expire_due_promotions() == 1
        assert await w.balance(account_id) == NANOS + 300 - 900
        events = [i for i, _ in await w.outbox() if i.startswith("promo.expired:")]
        assert len(events) == 1

    async def test_promo_idempotency_and_validation(self, w: World) -> None:
        account_id, _, _ = await w.account()
        expires = int((w.clock.now + DAY) * 1000)
        first = await w.billing.add_credits(account_id, 100, "p", credit_kind="promotional",
                                            expires_at_unix_ms=expires)
        again = await w.billing.add_credits(account_id, 100, "p", credit_kind="promotional",
                                            expires_at_unix_ms=expires)
        assert again.replayed and again.transaction_id == first.transaction_id and again.balance_nanos == 100
        with pytest.raises(errors.IdempotencyKeyReused):
            await w.billing.add_credits(account_id, 100, "p", credit_kind="promotional",
                                        expires_at_unix_ms=expires + 1)
        with pytest.raises(errors.IdempotencyKeyReused):
            await w.billing.add_credits(account_id, 100, "p")  # the same key as paid credit
        with pytest.raises(errors.InvalidArgument):
            await w.billing.add_credits(account_id, 100, "q", credit_kind="promotional")  # no expiry
        with pytest.raises(errors.InvalidArgument):
            await w.billing.add_credits(account_id, 100, "r", expires_at_unix_ms=expires)  # paid never expires
        with pytest.raises(errors.InvalidArgument):
            await w.billing.add_credits(account_id, 100, "s", credit_kind="bonus", expires_at_unix_ms=expires)

    async def test_an_expiry_never_takes_money_an_open_hold_is_using(self, w: World) -> None:
        account_id, _, api_key = await w.account()
        expires = int((w.clock.now + 60) * 1000)
        await w.billing.add_credits(account_id, 100_000, "promo", credit_kind="promotional",
                                    expires_at_unix_ms=expires)
        hold = await w.billing.authorize(api_key, "req_open", MODEL, 10, 10)
        w.clock.advance(61)
        await w.credits.expire_due_promotions()
        wallet = await w.billing.get_balance(account_id)
        assert wallet.balance_nanos == hold.hold_amount_nanos and wallet.available_nanos == 0


# --- refunds and credit notes -----------------------------------------------------------------------------------


class TestRefundsAndCreditNotes:
    async def test_refund_reverses_part_of_a_charge_at_most_the_charge_idempotently(self, w: World) -> None:
        account_id, key_id, api_key = await w.account(paid=NANOS)
        await w.serve(api_key, account_id, key_id, "req_1", 11_000)
        first = await w.credits.refund_charge(account_id, "rf-1", "req_1", 6_000, "slow answer")
        assert not first.replayed and first.balance_nanos == NANOS - 5_000
        again = await w.credits.refund_charge(account_id, "rf-1", "req_1", 6_000, "slow answer")
        assert again.replayed and again.transaction_id == first.transaction_id
        assert await w.balance(account_id) == NANOS - 5_000
        with pytest.raises(errors.IdempotencyKeyReused):
            await w.credits.refund_charge(account_id, "rf-1", "req_1", 7_000, "slow answer")
        with pytest.raises(errors.RefundExceedsCharge):
            await w.credits.refund_charge(account_id, "rf-2", "req_1", 5_001, "more")
        await w.credits.refund_charge(account_id, "rf-2", "req_1", 5_000, "the rest")
        assert await w.balance(account_id) == NANOS
        with pytest.raises(errors.RefundExceedsCharge):
            await w.credits.refund_charge(account_id, "rf-3", "req_1", 1, "nothing left")
        with pytest.raises(errors.ChargeNotFound):
            await w.credits.refund_charge(account_id, "rf-4", "req_unknown", 1, "no such request")
        other, _, _ = await w.account(paid=NANOS)
        with pytest.raises(errors.ChargeNotFound):  # another account's request is not found
            await w.credits.refund_charge(other, "rf-5", "req_1", 1, "not mine")
        with pytest.raises(errors.InvalidArgument):
            await w.credits.refund_charge(account_id, "rf-6", "req_1", 1, "  ")
        refunds = [billing_pb2.ChargeRefunded.FromString(v) for i, v in await w.outbox()
                   if i.startswith("charge.refunded:")]
        assert [(r.amount_nanos, r.reason, r.transaction.kind) for r in refunds] == [
            (6_000, "slow answer", "refund"), (5_000, "the rest", "refund")]

    async def test_credit_note_against_a_period(self, w: World) -> None:
        account_id, _, _ = await w.account()
        note = await w.credits.issue_credit_note(account_id, "cn-1", "2023-10", 2_500, "outage on the 3rd")
        assert note.balance_nanos == 2_500 and not note.replayed
        assert (await w.credits.issue_credit_note(account_id, "cn-1", "2023-10", 2_500, "outage on the 3rd")).replayed
        with pytest.raises(errors.IdempotencyKeyReused):
            await w.credits.issue_credit_note(account_id, "cn-1", "2023-09", 2_500, "outage on the 3rd")
        with pytest.raises(errors.InvalidPeriod):
            await w.credits.issue_credit_note(account_id, "cn-2", "2023-12", 1, "a month still to come")
        with pytest.raises(errors.InvalidPeriod):
            await w.credits.issue_credit_note(account_id, "cn-3", "2023-13", 1, "no such month")
        with pytest.raises(errors.AccountNotFound):
            await w.credits.issue_credit_note("acct_nobody", "cn-4", "2023-10", 1, "who")
        assert await w.balance(account_id) == 2_500


# --- statements -------------------------------------------------------------------------------------------------


class TestStatements:
    async def _november(self, w: World) -> tuple[str, str, str]:
        account_id, key_id, api_key = await w.account(paid=5 * NANOS, project="research")
        await w.billing.add_credits(account_id, NANOS, "promo", credit_kind="promotional",
                                    expires_at_unix_ms=int((w.clock.now + DAY) * 1000))
        await w.serve(api_key, account_id, key_id, "req_1", 300_000, MODEL, "research")
        await w.serve(api_key, account_id, key_id, "req_2", 200_000, OTHER_MODEL, "research")
        await w.serve(api_key, account_id, key_id, "req_3", 100_000, MODEL, "")
        await w.credits.refund_charge(account_id, "rf-1", "req_2", 50_000, "wrong answer")
        await w.credits.issue_credit_note(account_id, "cn-1", "2023-11", 70_000, "goodwill")
        w.clock.advance(DAY)
        await w.credits.expire_due_promotions()
        return account_id, key_id, api_key

    async def test_an_open_month_is_a_draft_that_adds_up_to_the_wallet(self, w: World) -> None:
        account_id, _, _ = await self._november(w)
        s = await w.statements.statement(account_id, "2023-11")
        assert not s.closed and s.currency == "USD" and s.time_zone == "UTC"
        assert (s.opening_balance_nanos, s.paid_credits_nanos, s.promotional_credits_nanos) == (0, 5 * NANOS, NANOS)
        assert (s.charges_nanos, s.refunds_nanos, s.credit_notes_nanos) == (600_000, 50_000, 70_000)
        # the promo paid for every charge, and the refund of a promo-paid charge went back to the promo
        assert s.expired_promotional_nanos == NANOS - 600_000 + 50_000
        assert adds_up(s) and s.closing_balance_nanos == await w.balance(account_id)
        assert [(line.name, line.amount_nanos, line.entries) for line in s.charges_by_model] == [
            (MODEL, 400_000, 2), (OTHER_MODEL, 200_000, 1)]
        # req_3's usage carried no project (an older event): it falls back to its key's project
        assert [(line.name, line.amount_nanos) for line in s.charges_by_project] == [("research", 600_000)]
        assert [(a.kind, a.id, a.reference, a.amount_nanos, a.reason) for a in s.adjustments] == [
            ("refund", "rf-1", "req_2", 50_000, "wrong answer"), ("credit_note", "cn-1", "2023-11", 70_000, "goodwill")]
        # the hash is over the covered events as stored in the log, in log order
        lines = "".join(f"{i} {hashlib.sha256(v).hexdigest()}\n" for i, v in await w.outbox()
                        if not i.startswith(("account.", "api_key.", "group.", "hold.placed:", "statement.")))
        assert s.events_sha256 == hashlib.sha256(lines.encode()).hexdigest() and s.event_count == 8

    async def test_a_month_closes_once_ended_is_stored_and_never_changes(self, w: World, tmp_path: Path) -> None:
        account_id, key_id, api_key = await self._november(w)
        draft = await w.statements.statement(account_id, "2023-11")
        w.clock.now = NOV_END + 10  # ended, but within the settle margin: still a draft
        assert not (await w.statements.statement(account_id, "2023-11")).closed
        w.clock.now = NOV_END + 61
        closed = await w.statements.statement(account_id, "2023-11")
        assert closed.closed and closed.events_sha256 == draft.events_sha256
        assert closed.closing_balance_nanos == draft.closing_balance_nanos
        await w.serve(api_key, account_id, key_id, "req_dec", 40_000)  # December
        await w.credits.refund_charge(account_id, "rf-2", "req_1", 10_000, "late refund of a November request")
        again = await w.statements.statement(account_id, "2023-11")
        assert again.SerializeToString() == closed.SerializeToString()
        closed_events = [i for i, _ in await w.outbox() if i.startswith("statement.closed:")]
        assert closed_events == [f"statement.closed:{account_id}:2023-11"]
        december = await w.statements.statement(account_id, "2023-12")
        assert not december.closed and december.opening_balance_nanos == closed.closing_balance_nanos
        assert (december.charges_nanos, december.refunds_nanos) == (40_000, 10_000)
        assert adds_up(december) and december.closing_balance_nanos == await w.balance(account_id)
        await w.assert_rebuild_equal(tmp_path)

    async def test_months_follow_the_account_time_zone(self, w: World) -> None:
        account_id, key_id, api_key = await w.account(paid=NANOS, time_zone="America/New_York")
        w.clock.now = NOV_END + 3600  # 2023-12-01 01:00 UTC = 2023-11-30 20:00 in New York
        await w.serve(api_key, account_id, key_id, "req_late", 9_000)
        november = await w.statements.statement(account_id, "2023-11")
        assert november.charges_nanos == 9_000 and november.time_zone == "America/New_York"
        assert november.period_end_unix_ms == (NOV_END + 5 * 3600) * 1000

    async def test_bad_or_future_periods_and_unknown_accounts(self, w: World) -> None:
        account_id, _, _ = await w.account()
        for bad in ("2023-13", "2023-1", "nov", "", "1969-12"):
            with pytest.raises(errors.InvalidPeriod):
                await w.statements.statement(account_id, bad)
        with pytest.raises(errors.InvalidPeriod):
            await w.statements.statement(account_id, "2024-01")
        with pytest.raises(errors.AccountNotFound):
            await w.statements.statement("acct_nobody", "2023-11")
        empty = await w.statements.statement(account_id, "2023-10")  # before the account: all zero, closed
        assert empty.closed and empty.event_count == 0 and empty.closing_balance_nanos == 0

    async def test_every_new_entry_rebuilds_from_the_log(self, w: World, tmp_path: Path) -> None:
        await self._november(w)
        await w.assert_rebuild_equal(tmp_path)
