"""The application and its repository against real databases: ONE test class, run on SQLite and on PostgreSQL.

``TestApplication`` holds the tests; conftest's ``db`` fixture runs each on both databases (the pattern of
pyeventsourcing's test suites, with a parametrized fixture instead of a subclass per backend). Money is checked in
exact nano-units.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from billing_support import (
    INPUT_PRICE,
    MODEL,
    OTHER_MODEL,
    OUTPUT_PRICE,
    Database,
    FakeClock,
    StaticPrices,
    hold_for,
    rated,
    static_prices,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1.billing_pb2 import GROUP_KIND_PROJECT, GROUP_KIND_TEAM
from tollgate_billing import errors
from tollgate_billing.application import CAPTURE_OVERRUN_NANOS, CAPTURE_OVERRUNS, Billing
from tollgate_billing.domain import hash_api_key
from tollgate_billing.group_admin import GroupAdmin
from tollgate_billing.rebuild import compare, replay_outbox
from tollgate_billing.tables import api_keys, holds, ledger_postings, messaging, metadata
from tollgate_common.db import create_engine, create_schema, session_maker

NANOS = 10**9


class Harness:
    """A Billing over one real database with a controllable clock."""

    def __init__(self, engine: AsyncEngine, billing: Billing, clock: FakeClock) -> None:
        self.engine = engine
        self.billing = billing
        self.clock = clock
        self.sessions = session_maker(engine)

    async def funded_key(self, credit: int = 1 * NANOS, **key_options: object) -> tuple[str, str, str]:
        account, _ = await self.billing.create_account("Acme")
        if credit:
            await self.billing.add_credits(account.account_id, credit, "initial")
        groups = GroupAdmin(self.billing)  # a key's team and project must exist in its account
        for kind, field in ((GROUP_KIND_TEAM, "team"), (GROUP_KIND_PROJECT, "project")):
            if key_options.get(field):
                await groups.create_group(account.account_id, kind, str(key_options[field]), str(key_options[field]))
        key = await self.billing.create_api_key(account.account_id, label="test", **key_options)  # type: ignore[arg-type]
        return account.account_id, key.key_id, key.api_key

    async def usage(self, hold_id: str, account_id: str, key_id: str, price: int) -> None:
        """Deliver a rated usage event the way the consumer does: inside one transaction."""
        async with self.sessions.begin() as session:
            await self.billing.settle_usage(session, rated(hold_id, account_id, key_id, price), hold_id)

    async def outbox_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(messaging.outbox.c.event_id).order_by(messaging.outbox.c.id))
            return [r[0] for r in rows]

    async def hold_row(self, hold_id: str) -> dict[str, object]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(holds).where(holds.c.hold_id == hold_id))).one()
            return dict(row._mapping)

    async def wallet_postings(self, account_id: str) -> int:
        async with self.engine.connect() as conn:
            total = await conn.execute(
                select(func.coalesce(func.sum(ledger_postings.c.amount_nanos), 0)).where(
                    ledger_postings.c.ledger_account == f"wallet:{account_id}"
                )
            )
            return int(total.scalar_one())

    async def ledger_sum(self) -> int:
        async with self.engine.connect() as conn:
            total = await conn.execute(select(func.coalesce(func.sum(ledger_postings.c.amount_nanos), 0)))
            return int(total.scalar_one())


class TestApplication:
    """Behaviour every backend must show. Subclasses provide the ``db`` fixture."""

    @pytest.fixture
    async def h(self, db: Database) -> AsyncIterator[Harness]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        clock = FakeClock()
        billing = Billing(engine, static_prices(), hold_ttl_seconds=600, key_cache_seconds=5.0, clock=clock)
        yield Harness(engine, billing, clock)
        await engine.dispose()

    # --- accounts and keys ----------------------------------------------------------------------------------

    async def test_account_is_created_with_an_empty_usd_wallet(self, h: Harness) -> None:
        account, created = await h.billing.create_account("Acme")
        assert created and account.currency == "USD" and account.account_id.startswith("acct_")
        wallet = await h.billing.get_balance(account.account_id)
        assert (wallet.balance_nanos, wallet.held_nanos, wallet.available_nanos) == (0, 0, 0)

    async def test_create_account_with_an_id_is_idempotent(self, h: Harness) -> None:
        first, created = await h.billing.create_account("Acme", "EUR", account_id="acct_fixed")
        again, created_again = await h.billing.create_account("Acme renamed", "", account_id="acct_fixed")
        assert created and not created_again
        assert again == first and again.currency == "EUR"
        assert await h.outbox_ids() == ["account.created:acct_fixed"]

    async def test_bad_currency_is_rejected(self, h: Harness) -> None:
        with pytest.raises(errors.InvalidArgument):
            await h.billing.create_account("Acme", "dollars")

    async def test_api_key_is_returned_once_and_only_its_hash_is_stored(self, h: Harness) -> None:
        account, _ = await h.billing.create_account("Acme")
        key = await h.billing.create_api_key(account.account_id, label="ci", allowed_models=[MODEL])
        assert key.api_key.startswith("tg-") and len(key.api_key) == 46
        assert key.prefix == key.api_key[:12] and key.key_id.startswith("key_")
        async with h.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_id == key.key_id))).one()
            outbox = (await conn.execute(select(messaging.outbox.c.value, messaging.outbox.c.headers))).all()
        assert row.key_hash == hash_api_key(key.api_key)
        assert key.api_key not in json.dumps([str(v) for v in row])
        assert all(key.api_key.encode() not in value and key.api_key not in headers for value, headers in outbox)

    async def test_api_key_for_unknown_account_is_not_found(self, h: Harness) -> None:
        with pytest.raises(errors.AccountNotFound):
            await h.billing.create_api_key("acct_missing")

    # --- credits --------------------------------------------------------------------------------------------

    async def test_add_credits_is_idempotent_on_the_idempotency_key(self, h: Harness) -> None:
        account, _ = await h.billing.create_account("Acme")
        first = await h.billing.add_credits(account.account_id, 5 * NANOS, "pay_1", "card payment")
        again = await h.billing.add_credits(account.account_id, 5 * NANOS, "pay_1", "card payment")
        other = await h.billing.add_credits(account.account_id, 2 * NANOS, "pay_2")
        assert not first.replayed and again.replayed and not other.replayed
        assert again.transaction_id == first.transaction_id
        assert first.balance_nanos == 5 * NANOS and again.balance_nanos == 5 * NANOS
        assert (await h.billing.get_balance(account.account_id)).balance_nanos == 7 * NANOS
        entries = await h.billing.list_ledger_entries(account.account_id)
        legs = {(e.kind, e.ledger_account, e.amount_nanos) for e in entries if e.transaction_id == first.transaction_id}
        assert legs == {("credit_purchase", "funding:external", -5 * NANOS),
                        ("credit_purchase", f"wallet:{account.account_id}", 5 * NANOS)}

    async def test_add_credits_rejects_non_positive_amounts_and_unknown_accounts(self, h: Harness) -> None:
        account, _ = await h.billing.create_account("Acme")
        for amount in (0, -5):
            with pytest.raises(errors.InvalidArgument):
                await h.billing.add_credits(account.account_id, amount, f"k{amount}")
        with pytest.raises(errors.AccountNotFound):
            await h.billing.add_credits("acct_missing", NANOS, "k")
        assert (await h.billing.get_balance(account.account_id)).balance_nanos == 0

    async def test_an_idempotency_key_reused_with_another_amount_is_refused(self, h: Harness) -> None:
        """Replaying it would hide that the second payment is another amount (ingress answers 409)."""
        account, _ = await h.billing.create_account("Acme")
        await h.billing.add_credits(account.account_id, 5 * NANOS, "pay_1")
        with pytest.raises(errors.IdempotencyKeyReused, match="5000000000"):
            await h.billing.add_credits(account.account_id, 6 * NANOS, "pay_1")
        assert (await h.billing.add_credits(account.account_id, 5 * NANOS, "pay_1")).replayed
        assert (await h.billing.get_balance(account.account_id)).balance_nanos == 5 * NANOS

    async def test_a_credit_beyond_what_a_bigint_holds_is_refused(self, h: Harness) -> None:
        """On SQLite the sum would silently become a REAL (and break the account), on PostgreSQL a 500."""
        account, _ = await h.billing.create_account("Acme")
        top = 2**63 - 1
        await h.billing.add_credits(account.account_id, top - 10, "most")
        with pytest.raises(errors.AmountOutOfRange):
            await h.billing.add_credits(account.account_id, 11, "one too many")
        await h.billing.add_credits(account.account_id, 10, "exactly the top")
        wallet = await h.billing.get_balance(account.account_id)
        assert type(wallet.balance_nanos) is int and wallet.balance_nanos == top
        assert await h.wallet_postings(account.account_id) == top

    # --- authorize ------------------------------------------------------------------------------------------

    async def test_authorize_places_a_hold_for_the_maximum_cost(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key(team="ml", project="chatbot")
        result = await h.billing.authorize(api_key, "req_1", MODEL, 100, 0)
        assert result.hold_amount_nanos == hold_for(100) == 100 * 200 + 1000 * 700
        assert (result.account_id, result.key_id, result.hold_id) == (account_id, key_id, "req_1")
        assert (result.currency, result.team, result.project) == ("USD", "ml", "chatbot")
        wallet = await h.billing.get_balance(account_id)
        assert wallet.balance_nanos == NANOS and wallet.held_nanos == hold_for(100)
        assert wallet.available_nanos == NANOS - hold_for(100)
        explicit = await h.billing.authorize(api_key, "req_2", MODEL, 10, 50)
        assert explicit.hold_amount_nanos == 10 * 200 + 50 * 700
        assert "hold.placed:req_1" in await h.outbox_ids()

    async def test_repeated_authorize_returns_the_same_hold(self, h: Harness) -> None:
        account_id, _, api_key = await h.funded_key()
        first = await h.billing.authorize(api_key, "req_same", MODEL, 100, 0)
        again = await h.billing.authorize(api_key, "req_same", MODEL, 100, 0)
        assert again.hold_id == first.hold_id and again.hold_amount_nanos == first.hold_amount_nanos
        assert again.replayed
        assert (await h.billing.get_balance(account_id)).held_nanos == first.hold_amount_nanos

    async def test_request_id_of_another_key_is_a_conflict(self, h: Harness) -> None:
        _, _, key_a = await h.funded_key()
        _, _, key_b = await h.funded_key()
        await h.billing.authorize(key_a, "req_shared", MODEL, 1, 1)
        with pytest.raises(errors.RequestIdConflict):
            await h.billing.authorize(key_b, "req_shared", MODEL, 1, 1)

    async def test_authorize_refusals(self, h: Harness) -> None:
        account_id, _, api_key = await h.funded_key(allowed_models=[MODEL])
        with pytest.raises(errors.InvalidApiKey):
            await h.billing.authorize("tg-not-a-key", "r1", MODEL, 1, 1)
        with pytest.raises(errors.ModelNotAllowed):
            await h.billing.authorize(api_key, "r2", OTHER_MODEL, 1, 1)
        _, _, any_model_key = await h.funded_key()
        with pytest.raises(errors.ModelNotPriced):
            await h.billing.authorize(any_model_key, "r3", "no-such-model", 1, 1)
        with pytest.raises(errors.InvalidArgument):
            await h.billing.authorize(api_key, "r4", MODEL, -1, 1)
        with pytest.raises(errors.InvalidArgument):
            await h.billing.authorize(api_key, "", MODEL, 1, 1)
        assert (await h.billing.get_balance(account_id)).held_nanos == 0

    async def test_every_fallback_model_is_checked_and_the_hold_covers_the_dearest(self, h: Harness) -> None:
        """A request that may fall back to another model is held for the most expensive candidate, and refused as
        a whole when one candidate is outside the key's allow-list (the router could otherwise serve it)."""
        account_id, _, limited = await h.funded_key(allowed_models=[MODEL])
        with pytest.raises(errors.ModelNotAllowed, match=OTHER_MODEL):
            await h.billing.authorize(limited, "r_fb1", MODEL, 10, 50, [OTHER_MODEL])
        assert (await h.billing.get_balance(account_id)).held_nanos == 0
        _, _, any_model = await h.funded_key()
        with pytest.raises(errors.ModelNotPriced):
            await h.billing.authorize(any_model, "r_fb2", MODEL, 10, 50, ["no-such-model"])
        result = await h.billing.authorize(any_model, "r_fb3", MODEL, 10, 50, [OTHER_MODEL])
        assert result.hold_amount_nanos == 10 * 960 + 50 * 4800 > 10 * INPUT_PRICE + 50 * OUTPUT_PRICE
        assert (result.hold_model, result.hold_output_tokens) == (OTHER_MODEL, 50)
        # without an explicit cap each candidate is held for its own cap: the dearest total wins
        uncapped = await h.billing.authorize(any_model, "r_fb4", OTHER_MODEL, 10, 0, [MODEL])
        assert uncapped.hold_amount_nanos == 10 * 960 + 4096 * 4800
        assert (uncapped.hold_model, uncapped.hold_output_tokens) == (OTHER_MODEL, 4096)
        assert (await h.hold_row("r_fb4"))["model"] == OTHER_MODEL

    async def test_insufficient_balance_holds_nothing(self, h: Harness) -> None:
        account_id, _, api_key = await h.funded_key(credit=hold_for(100) - 1)
        with pytest.raises(errors.InsufficientBalance):
            await h.billing.authorize(api_key, "req_big", MODEL, 100, 0)
        wallet = await h.billing.get_balance(account_id)
        assert wallet.held_nanos == 0
        assert "hold.placed:req_big" not in await h.outbox_ids()
        await h.billing.authorize(api_key, "req_small", MODEL, 99, 0)  # exactly what is left is fine

    async def test_concurrent_holds_share_transactions_and_never_overspend(self, h: Harness) -> None:
        """Authorize calls arriving together are group-committed; each still gets its own answer: exactly the holds
        the balance covers are placed, a refusal of one (or a retried id) never changes another's."""
        amount = hold_for(10, 10)
        account_id, _, api_key = await h.funded_key(credit=amount * 20)
        other_account, _, other_key = await h.funded_key(credit=amount * 100)
        batches = h.billing.holds.batches
        calls = [h.billing.authorize(api_key, f"race_{i}", MODEL, 10, 10) for i in range(50)]
        calls += [h.billing.authorize(other_key, f"other_{i}", MODEL, 10, 10) for i in range(30)]
        calls += [h.billing.authorize(other_key, "other_0", MODEL, 10, 10)]  # a retry inside the same burst
        results = await asyncio.gather(*calls, return_exceptions=True)
        placed = [r for r in results[:50] if not isinstance(r, BaseException)]
        refused = [r for r in results[:50] if isinstance(r, BaseException)]
        assert len(placed) == 20 and all(isinstance(r, errors.InsufficientBalance) for r in refused)
        assert all(not isinstance(r, BaseException) and not r.replayed for r in results[50:80])
        retry = results[80]
        assert not isinstance(retry, BaseException) and retry.replayed and retry.hold_id == "other_0"
        assert h.billing.holds.batches - batches < 20  # many callers per transaction
        wallet = await h.billing.get_balance(account_id)
        assert (wallet.held_nanos, wallet.available_nanos) == (20 * amount, 0)
        assert (await h.billing.get_balance(other_account)).held_nanos == 30 * amount
        ids = await h.outbox_ids()
        assert sum(i.startswith("hold.placed:race_") for i in ids) == 20
        assert sum(i.startswith("hold.placed:other_") for i in ids) == 30

    async def test_a_negative_balance_refuses_every_new_hold(self, h: Harness) -> None:
        """A capture above its hold may take a wallet below zero; until it is topped up nothing more is held."""
        account_id, key_id, api_key = await h.funded_key(credit=hold_for(10, 10) + 100)
        await h.billing.authorize(api_key, "req_under_held", MODEL, 10, 10)
        overruns = CAPTURE_OVERRUNS._value.get()
        overrun_nanos = CAPTURE_OVERRUN_NANOS._value.get()
        await h.usage("req_under_held", account_id, key_id, hold_for(10, 10) + 500)
        assert CAPTURE_OVERRUNS._value.get() == overruns + 1
        assert CAPTURE_OVERRUN_NANOS._value.get() == overrun_nanos + 500
        assert (await h.billing.get_balance(account_id)).balance_nanos == -400
        with pytest.raises(errors.InsufficientBalance, match="negative"):
            await h.billing.authorize(api_key, "req_next", MODEL, 0, 1)
        await h.billing.add_credits(account_id, hold_for(10, 10) + 400, "top up")
        await h.billing.authorize(api_key, "req_after_top_up", MODEL, 10, 10)

    async def test_key_limit_counts_usage_and_open_holds(self, h: Harness) -> None:
        limit = hold_for(10, 10) * 2 + 1000
        account_id, key_id, api_key = await h.funded_key(has_limit=True, limit_nanos=limit)
        await h.billing.authorize(api_key, "a", MODEL, 10, 10)
        await h.billing.authorize(api_key, "b", MODEL, 10, 10)
        with pytest.raises(errors.KeyLimitExceeded):
            await h.billing.authorize(api_key, "c", MODEL, 10, 10)
        await h.usage("a", account_id, key_id, 1000)  # frees all but the 1000 charged
        await h.billing.authorize(api_key, "c", MODEL, 10, 10)
        with pytest.raises(errors.KeyLimitExceeded):
            await h.billing.authorize(api_key, "d", MODEL, 10, 10)
        info = await h.billing.get_key_info(api_key)
        assert info.key.usage_nanos == 1000
        assert info.limit_remaining_nanos == limit - 1000 - 2 * hold_for(10, 10)

    async def test_price_book_not_loaded_is_unavailable(self, h: Harness) -> None:
        _, _, api_key = await h.funded_key()
        h.billing.prices = StaticPrices(None)
        with pytest.raises(errors.PriceBookUnavailable):
            await h.billing.authorize(api_key, "r", MODEL, 1, 1)

    async def test_rate_limit_per_key_with_retry_after(self, h: Harness) -> None:
        _, _, api_key = await h.funded_key(rate_limit_rpm=2)
        _, _, other_key = await h.funded_key(rate_limit_rpm=2)
        await h.billing.authorize(api_key, "r1", MODEL, 1, 1)
        await h.billing.authorize(api_key, "r2", MODEL, 1, 1)
        with pytest.raises(errors.RateLimited) as err:
            await h.billing.authorize(api_key, "r3", MODEL, 1, 1)
        assert 1 <= (err.value.retry_after or 0) <= 60
        await h.billing.authorize(other_key, "r4", MODEL, 1, 1)  # limits are per key

    # --- usage ----------------------------------------------------------------------------------------------

    async def test_usage_captures_the_rated_price_and_releases_the_rest(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        await h.billing.authorize(api_key, "req_1", MODEL, 100, 0)
        await h.usage("req_1", account_id, key_id, 30_000)
        wallet = await h.billing.get_balance(account_id)
        assert (wallet.balance_nanos, wallet.held_nanos) == (NANOS - 30_000, 0)
        hold = await h.hold_row("req_1")
        assert (hold["status"], hold["captured_nanos"], hold["released_nanos"]) == (
            "captured", 30_000, hold_for(100) - 30_000)
        entries = await h.billing.list_ledger_entries(account_id)
        charge = {(e.ledger_account, e.amount_nanos) for e in entries if e.kind == "usage_charge"}
        assert charge == {(f"wallet:{account_id}", -30_000), ("revenue:usage", 30_000)}
        assert await h.wallet_postings(account_id) == wallet.balance_nanos
        assert await h.ledger_sum() == 0
        assert (await h.billing.get_key_info(api_key)).key.usage_nanos == 30_000

    async def test_a_second_usage_event_for_the_same_hold_charges_nothing(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        await h.billing.authorize(api_key, "req_1", MODEL, 100, 0)
        await h.usage("req_1", account_id, key_id, 30_000)
        await h.usage("req_1", account_id, key_id, 30_000)
        assert (await h.billing.get_balance(account_id)).balance_nanos == NANOS - 30_000

    async def test_zero_usage_releases_everything_without_a_ledger_entry(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        await h.billing.authorize(api_key, "req_blocked", MODEL, 100, 0)
        await h.usage("req_blocked", account_id, key_id, 0)
        wallet = await h.billing.get_balance(account_id)
        assert (wallet.balance_nanos, wallet.held_nanos) == (NANOS, 0)
        assert [e.kind for e in await h.billing.list_ledger_entries(account_id)] == ["credit_purchase"] * 2
        assert (await h.hold_row("req_blocked"))["released_nanos"] == hold_for(100)

    async def test_usage_without_a_hold_is_charged_anyway(self, h: Harness) -> None:
        account_id, key_id, _ = await h.funded_key()
        await h.usage("req_unheld", account_id, key_id, 12_345)
        await h.usage("req_unheld", account_id, key_id, 12_345)
        assert (await h.billing.get_balance(account_id)).balance_nanos == NANOS - 12_345
        assert "hold.captured:req_unheld" in await h.outbox_ids()
        assert await h.ledger_sum() == 0

    async def test_expired_hold_is_captured_in_full_then_reconciled_by_late_usage(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        await h.billing.authorize(api_key, "req_slow", MODEL, 100, 0)
        await h.billing.authorize(api_key, "req_fresh", MODEL, 100, 0)
        assert await h.billing.expire_due_holds() == 0
        h.clock.advance(599)
        await h.billing.authorize(api_key, "req_later", MODEL, 100, 0)
        h.clock.advance(2)
        assert await h.billing.expire_due_holds() == 2  # req_slow and req_fresh; req_later is younger
        amount = hold_for(100)
        wallet = await h.billing.get_balance(account_id)
        assert (wallet.balance_nanos, wallet.held_nanos) == (NANOS - 2 * amount, amount)
        slow = await h.hold_row("req_slow")
        assert (slow["status"], slow["captured_nanos"], slow["needs_reconciliation"]) == ("expired", amount, True)

        await h.usage("req_slow", account_id, key_id, 40_000)
        wallet = await h.billing.get_balance(account_id)
        assert wallet.balance_nanos == NANOS - amount - 40_000
        slow = await h.hold_row("req_slow")
        assert (slow["status"], slow["refunded_nanos"]) == ("reconciled", amount - 40_000)
        # a late usage above what was captured is never charged beyond the hold
        await h.usage("req_fresh", account_id, key_id, amount * 2)
        assert (await h.billing.get_balance(account_id)).balance_nanos == NANOS - amount - 40_000
        assert (await h.hold_row("req_fresh"))["refunded_nanos"] == 0
        assert await h.wallet_postings(account_id) == (await h.billing.get_balance(account_id)).balance_nanos
        assert (await h.billing.get_key_info(api_key)).key.usage_nanos == amount + 40_000
        assert await h.ledger_sum() == 0

    async def test_a_batch_of_usage_is_settled_as_if_one_by_one(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        other_account, other_key, other_api_key = await h.funded_key()
        for i in range(3):
            await h.billing.authorize(api_key, f"req_{i}", MODEL, 100, 0)
        await h.billing.authorize(other_api_key, "req_o", MODEL, 100, 0)
        h.clock.advance(601)
        await h.billing.expire_due_holds()  # all four expire: captured in full
        await h.billing.authorize(api_key, "req_open", MODEL, 100, 0)
        amount = hold_for(100)
        items = [
            (rated("req_open", account_id, key_id, 1_000), "e1"),
            (rated("req_open", account_id, key_id, 1_000), "e1-again"),  # same hold twice in one batch
            (rated("req_0", account_id, key_id, 2_000), "e2"),  # late usage: refund
            (rated("req_0", account_id, key_id, 2_000), "e2-again"),
            (rated("req_o", other_account, other_key, 0), "e3"),
            (rated("req_none", account_id, key_id, 300), "e4"),  # no hold: charged anyway, once
            (rated("req_none", account_id, key_id, 300), "e4-again"),
            (rated("req_ghost", "acct_unknown", "key_x", 5), "e5"),  # nothing to charge
        ]
        async with h.sessions.begin() as session:
            recorded = await h.billing.settle_usage_batch(session, items)
        assert recorded == 4
        wallet = await h.billing.get_balance(account_id)
        assert wallet.held_nanos == 0
        assert wallet.balance_nanos == NANOS - 3 * amount + (amount - 2_000) - 1_000 - 300
        assert (await h.billing.get_balance(other_account)).balance_nanos == NANOS - amount + amount
        assert (await h.hold_row("req_open"))["status"] == "captured"
        assert (await h.hold_row("req_0"))["status"] == "reconciled"
        assert await h.wallet_postings(account_id) == wallet.balance_nanos
        assert await h.ledger_sum() == 0

    # --- queries --------------------------------------------------------------------------------------------

    async def test_ledger_entries_are_newest_first_with_a_limit(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        await h.billing.authorize(api_key, "req_1", MODEL, 1, 1)
        await h.usage("req_1", account_id, key_id, 500)
        entries = await h.billing.list_ledger_entries(account_id)
        assert len(entries) == 4
        assert [e.kind for e in entries] == ["usage_charge", "usage_charge", "credit_purchase", "credit_purchase"]
        assert len(await h.billing.list_ledger_entries(account_id, limit=1)) == 1
        with pytest.raises(errors.AccountNotFound):
            await h.billing.list_ledger_entries("acct_missing")

    async def test_the_ledger_pages_with_a_cursor_past_any_limit_and_new_entries_never_shift_a_page(
        self, h: Harness
    ) -> None:
        account_id, key_id, api_key = await h.funded_key()
        for i in range(6):  # 2 credit postings + 6 x 2 usage postings = 14 entries
            await h.billing.authorize(api_key, f"req_p{i}", MODEL, 1, 1)
            await h.usage(f"req_p{i}", account_id, key_id, 100 + i)
        everything = await h.billing.list_ledger_entries(account_id, limit=1000)
        assert len(everything) == 14
        first, token = await h.billing.ledger_page(account_id, limit=5)
        assert first == everything[:5] and token
        # an entry written while paging lands at the newest end and shifts nothing
        await h.billing.authorize(api_key, "req_late", MODEL, 1, 1)
        await h.usage("req_late", account_id, key_id, 7)
        seen = list(first)
        while token:
            page, token = await h.billing.ledger_page(account_id, limit=5, page_token=token)
            assert 1 <= len(page) <= 5
            seen += page
        assert seen == everything  # each entry once, newest first, down to the first credit
        _, after_14 = await h.billing.ledger_page(account_id, limit=14)  # 16 entries now
        tail, end = await h.billing.ledger_page(account_id, limit=2, page_token=after_14)
        assert len(tail) == 2 and end == ""  # exactly the rest: the last page says so
        for bad in ("garbage!", "bGVkZ2VyOnYxOng", "bGVkZ2VyOnYxOi0x"):  # not base64; "ledger:v1:x"; "ledger:v1:-1"
            with pytest.raises(errors.InvalidArgument):
                await h.billing.ledger_page(account_id, page_token=bad)

    async def test_key_info_is_balance_less_holds_and_usage_through_the_key(self, h: Harness) -> None:
        account_id, key_id, api_key = await h.funded_key()
        await h.billing.authorize(api_key, "req_1", MODEL, 100, 0)
        await h.billing.authorize(api_key, "req_2", MODEL, 100, 0)
        await h.usage("req_1", account_id, key_id, 7_000)
        info = await h.billing.get_key_info(api_key)
        assert info.key.grant.key_id == key_id and info.key.label == "test"
        assert info.balance_nanos == NANOS - 7_000 - hold_for(100)
        assert info.key.usage_nanos == 7_000
        assert not info.key.grant.has_limit and info.limit_remaining_nanos == 0
        with pytest.raises(errors.InvalidApiKey):
            await h.billing.get_key_info("tg-wrong")

    # --- the log --------------------------------------------------------------------------------------------

    async def test_every_change_is_an_event_and_replaying_them_rebuilds_the_same_state(
        self, h: Harness, tmp_path: Path
    ) -> None:
        account_id, key_id, api_key = await h.funded_key(has_limit=True, limit_nanos=NANOS)
        await h.billing.add_credits(account_id, 3 * NANOS, "top-up")
        for i in range(4):
            await h.billing.authorize(api_key, f"req_{i}", MODEL, 100, 0)
        await h.usage("req_0", account_id, key_id, 11_000)
        await h.usage("req_1", account_id, key_id, 0)
        h.clock.advance(601)
        await h.billing.expire_due_holds()
        await h.usage("req_2", account_id, key_id, 5_000)
        await h.usage("req_unheld", account_id, key_id, 77)
        assert sorted(await h.outbox_ids()) == sorted([
            f"account.created:{account_id}", f"api_key.created:{key_id}",
            *[e for e in await h.outbox_ids() if e.startswith("credits.added:")],
            *[f"hold.placed:req_{i}" for i in range(4)],
            "hold.captured:req_0", "hold.captured:req_1", "hold.expired:req_2", "hold.expired:req_3",
            "hold.reconciled:req_2", "hold.captured:req_unheld",
        ])
        assert len([e for e in await h.outbox_ids() if e.startswith("credits.added:")]) == 2

        fresh = create_engine(f"sqlite:///{tmp_path}/replayed.db")
        await create_schema(fresh, metadata)
        try:
            stats = await replay_outbox(h.engine, fresh)
            assert stats.applied == len(await h.outbox_ids()) and not stats.problems
            report = await compare(h.engine, fresh)
            assert report.equal, report.render()
        finally:
            await fresh.dispose()

    async def test_the_account_admin_flag_is_stored_shown_and_rebuilt_from_the_log(
        self, h: Harness, tmp_path: Path
    ) -> None:
        _, _, admin_key = await h.funded_key(account_admin=True)
        _, _, plain_key = await h.funded_key()
        assert (await h.billing.get_key_info(admin_key)).key.account_admin is True
        assert (await h.billing.get_key_info(plain_key)).key.account_admin is False
        fresh = create_engine(f"sqlite:///{tmp_path}/replayed.db")
        await create_schema(fresh, metadata)
        try:
            await replay_outbox(h.engine, fresh)
            report = await compare(h.engine, fresh)
            assert report.equal, report.render()
            async with fresh.connect() as conn:
                flags = (await conn.execute(select(api_keys.c.key_hash, api_keys.c.account_admin))).all()
            assert {r.key_hash: bool(r.account_admin) for r in flags} == {
                hash_api_key(admin_key): True, hash_api_key(plain_key): False}
        finally:
            await fresh.dispose()
