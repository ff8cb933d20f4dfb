"""The pure core: keys, hold arithmetic, the rate limiter and the decisions that turn usage into events."""

from __future__ import annotations

import pytest
from billing_support import rated
from tollgate_billing import domain, errors
from tollgate_billing.domain import ApiKeyGrant, HoldStatus, HoldView, ModelPrice, PriceBook

PRICE = ModelPrice("m", resale_input_price_nanos=3, resale_output_price_nanos=11, max_output_tokens=500)


def grant(**overrides: object) -> ApiKeyGrant:
    fields: dict[str, object] = dict(key_id="key_1", account_id="acct_1", currency="USD", allowed_models=frozenset(),
                                     has_limit=False, limit_nanos=0, team="", project="", rate_limit_rpm=0)
    fields.update(overrides)
    return ApiKeyGrant(**fields)  # type: ignore[arg-type]


def hold(status: HoldStatus = HoldStatus.OPEN, amount: int = 1000, captured: int = 0) -> HoldView:
    return HoldView("req_1", "acct_1", "key_1", amount, status, captured, expires_at_unix_ms=10_000)


def test_api_keys_are_random_prefixed_and_hashed() -> None:
    key, prefix = domain.new_api_key()
    other, _ = domain.new_api_key()
    assert key.startswith("tg-") and len(key) == 46 and key != other
    assert prefix == key[:12]
    assert set(key[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    digest = domain.hash_api_key(key)
    assert len(digest) == 64 and key not in digest and digest == domain.hash_api_key(key)


def test_hold_amount_uses_max_tokens_or_the_models_cap() -> None:
    assert domain.hold_amount(PRICE, 100, 0) == 100 * 3 + 500 * 11
    assert domain.hold_amount(PRICE, 100, 20) == 100 * 3 + 20 * 11
    assert domain.hold_amount(PRICE, 0, 1) == 11
    with pytest.raises(errors.InvalidArgument):
        domain.hold_amount(PRICE, -1, 0)
    with pytest.raises(errors.InvalidArgument):
        domain.hold_amount(PRICE, 2**62, 0)


def test_price_book_lookup_and_allow_list() -> None:
    book = PriceBook("v1", "USD", {"m": PRICE})
    assert book.price_for("m") is PRICE
    with pytest.raises(errors.ModelNotPriced):
        book.price_for("x")
    grant().check_model("anything")
    grant(allowed_models=frozenset({"m"})).check_model("m")
    with pytest.raises(errors.ModelNotAllowed):
        grant(allowed_models=frozenset({"m"})).check_model("x")


def test_ledger_transactions_must_balance() -> None:
    txn = domain.ledger_transaction("t1", domain.LedgerKind.USAGE_CHARGE, "r", [("a", -5), ("b", 5)], 1)
    assert sum(p.amount_nanos for p in txn.postings) == 0 and txn.kind == "usage_charge"
    with pytest.raises(ValueError):
        domain.ledger_transaction("t2", domain.LedgerKind.USAGE_CHARGE, "r", [("a", -5), ("b", 4)], 1)


def test_credits_must_be_positive_and_move_money_from_funding_to_the_wallet() -> None:
    event = domain.credits_added("acct_1", 7, "idem", "txn_1", "", 5)
    assert [(p.ledger_account, p.amount_nanos) for p in event.transaction.postings] == [
        ("funding:external", -7), ("wallet:acct_1", 7)]
    with pytest.raises(errors.InvalidArgument):
        domain.credits_added("acct_1", 0, "idem", "txn_1", "", 5)


def test_open_hold_captures_the_rated_price_and_releases_the_rest() -> None:
    event = domain.settle_usage(hold(), rated("req_1", "acct_1", "key_1", 300), "req_1", 50)
    assert event is not None and event.DESCRIPTOR.name == "HoldCaptured"
    assert (event.captured_nanos, event.released_nanos, event.hold_amount_nanos) == (300, 700, 1000)
    assert [(p.ledger_account, p.amount_nanos) for p in event.transaction.postings] == [
        ("wallet:acct_1", -300), ("revenue:usage", 300)]


def test_zero_usage_releases_everything_and_posts_nothing() -> None:
    event = domain.settle_usage(hold(), rated("req_1", "acct_1", "key_1", 0), "req_1", 50)
    assert event is not None and (event.captured_nanos, event.released_nanos) == (0, 1000)
    assert not event.HasField("transaction")


def test_expired_hold_refunds_the_difference_but_never_charges_more() -> None:
    expired = hold(HoldStatus.EXPIRED, captured=1000)
    refund = domain.settle_usage(expired, rated("req_1", "acct_1", "key_1", 400), "req_1", 50)
    assert refund is not None and refund.DESCRIPTOR.name == "HoldReconciled" and refund.refunded_nanos == 600
    assert [(p.ledger_account, p.amount_nanos) for p in refund.transaction.postings] == [
        ("revenue:usage", -600), ("wallet:acct_1", 600)]
    above = domain.settle_usage(expired, rated("req_1", "acct_1", "key_1", 5000), "req_1", 50)
    assert above is not None and above.refunded_nanos == 0 and not above.HasField("transaction")


def test_closed_holds_ignore_further_usage() -> None:
    for status in (HoldStatus.CAPTURED, HoldStatus.RECONCILED):
        assert domain.settle_usage(hold(status), rated("req_1", "acct_1", "key_1", 1), "req_1", 50) is None


def test_expiry_only_after_the_ttl_and_only_for_open_holds() -> None:
    assert domain.hold_expired(hold(), at_unix_ms=9_999) is None
    event = domain.hold_expired(hold(), at_unix_ms=10_000)
    assert event is not None and event.amount_nanos == 1000
    assert [(p.ledger_account, p.amount_nanos) for p in event.transaction.postings] == [
        ("wallet:acct_1", -1000), ("revenue:usage", 1000)]
    assert domain.hold_expired(hold(HoldStatus.CAPTURED), at_unix_ms=20_000) is None
    free = domain.hold_expired(hold(amount=0), at_unix_ms=20_000)
    assert free is not None and not free.HasField("transaction")


def test_hold_events_carry_the_ttl_and_reject_bad_ids() -> None:
    event = domain.hold_placed(grant(), "req_9", "m", 42, at_unix_ms=1_000, ttl_seconds=600)
    assert (event.hold_id, event.amount_nanos, event.expires_at_unix_ms) == ("req_9", 42, 601_000)
    with pytest.raises(errors.InvalidArgument):
        domain.hold_placed(grant(), "", "m", 42, at_unix_ms=1_000, ttl_seconds=600)


def test_currency_and_account_validation() -> None:
    assert domain.validate_currency("") == "USD"
    assert domain.validate_currency("eur") == "EUR"
    with pytest.raises(errors.InvalidArgument):
        domain.validate_currency("EURO")
    with pytest.raises(errors.InvalidArgument):
        domain.account_created("", "x", "USD", 1)
    with pytest.raises(errors.InvalidArgument):
        domain.api_key_created(key_id="k", account_id="a", key_hash="h", prefix="p", label="", has_limit=True,
                               limit_nanos=-1, allowed_models=[], team="", project="", rate_limit_rpm=0, at_unix_ms=1)
