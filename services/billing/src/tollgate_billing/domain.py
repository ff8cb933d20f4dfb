"""Billing's pure core: API keys, prices and holds, the double-entry ledger, and the decisions that produce events.

No I/O here. The application reads state, asks this module what happened (an event from
``tollgate.events.v1.billing``), and the projections apply that event to the tables, live and in a rebuild alike.
The events ARE the domain's past-tense facts, so they are the protobuf messages of the contract, not a copy.

Money is integer nano-units (1 USD = 10**9) everywhere. Ledger accounts are strings: ``wallet:<account_id>`` (the
customer's prepaid balance), ``revenue:usage`` (what we earned), ``funding:external`` (where credits come from).
Every ledger transaction's postings sum to zero.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from tollgate.events.v1 import billing_pb2, usage_pb2
from tollgate_common import hold_sizing
from tollgate_common.hold_sizing import INT64_MAX, CandidateHold, ModelPrice, output_cap

from .budgets import check_time_zone
from .errors import ExpiredApiKey, InvalidArgument, ModelNotAllowed, ModelNotPriced, RevokedApiKey
from .key_lifecycle import check_expiry, check_label, clean_models

__all__ = [
    "FUNDING_EXTERNAL",
    "INT64_MAX",
    "NANOS",
    "REVENUE_USAGE",
    "ApiKeyGrant",
    "CandidateHold",
    "HoldStatus",
    "HoldView",
    "LedgerKind",
    "ModelPrice",
    "PriceBook",
    "UnknownUsageCharge",
    "account_created",
    "api_key_created",
    "charge_for",
    "credits_added",
    "hash_api_key",
    "hold_amount",
    "hold_expired",
    "hold_for_candidates",
    "hold_placed",
    "ledger_transaction",
    "new_api_key",
    "output_cap",
    "settle_usage",
    "unheld_capture",
    "validate_currency",
    "wallet_account",
]

NANOS = 10**9
REVENUE_USAGE = "revenue:usage"
FUNDING_EXTERNAL = "funding:external"
#: "tg-" + 43 url-safe characters (32 random bytes); the prefix is what a user sees in a key list.
KEY_PREFIX = "tg-"
KEY_PREFIX_LENGTH = 12
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def wallet_account(account_id: str) -> str:
    return f"wallet:{account_id}"


class LedgerKind(StrEnum):
    CREDIT_PURCHASE = "credit_purchase"
    USAGE_CHARGE = "usage_charge"
    HOLD_EXPIRY_CHARGE = "hold_expiry_charge"
    HOLD_REFUND = "hold_refund"


class HoldStatus(StrEnum):
    OPEN = "open"
    #: Closed by its usage event: the rated price charged, the rest released.
    CAPTURED = "captured"
    #: No usage before the TTL: charged in full, waiting for a late usage event to reconcile.
    EXPIRED = "expired"
    #: Expired, then its usage arrived and the difference was refunded.
    RECONCILED = "reconciled"


# --- API keys ---------------------------------------------------------------------------------------------------


def hash_api_key(api_key: str) -> str:
    """SHA-256 hex: what billing stores and looks keys up by. The plaintext is never stored or logged."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh key and its display prefix (first 12 characters, e.g. ``tg-AbCdEfGhI``)."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return plaintext, plaintext[:KEY_PREFIX_LENGTH]


@dataclass(frozen=True, slots=True)
class ApiKeyGrant:
    """What a resolved API key allows: the static part of a key, safe to cache for a few seconds."""

    key_id: str
    account_id: str
    currency: str
    allowed_models: frozenset[str]
    has_limit: bool
    limit_nanos: int
    team: str
    project: str
    rate_limit_rpm: int
    #: When this secret stops working (unix ms; 0 = never): the key's expiry, or for a rotated-out secret the
    #: end of its grace, whichever is first. Checked on every use, so a cached grant expires on time too.
    valid_until_unix_ms: int = 0
    revoked: bool = False

    def check_usable(self, now_unix_ms: int) -> None:
        if self.revoked:
            raise RevokedApiKey("this API key has been revoked")
        if self.valid_until_unix_ms and now_unix_ms >= self.valid_until_unix_ms:
            raise ExpiredApiKey("this API key has expired")

    def check_model(self, model: str) -> None:
        try:
            hold_sizing.check_allowed(self.allowed_models, model)
        except hold_sizing.SizingError as exc:
            raise _refusal(exc) from None


# --- prices -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Billing's cached copy of metering's price book (only what a hold needs)."""

    version: str
    currency: str
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)

    def price_for(self, model: str) -> ModelPrice:
        try:
            return hold_sizing.price_of(self.prices, model)
        except hold_sizing.SizingError as exc:
            raise _refusal(exc) from None


def hold_amount(price: ModelPrice, prompt_tokens: int, max_output_tokens: int) -> int:
    """The most the request can cost (the shared rule: :mod:`tollgate_common.hold_sizing`)."""
    try:
        return hold_sizing.hold_amount(price, prompt_tokens, max_output_tokens)
    except hold_sizing.SizingError as exc:
        raise _refusal(exc) from None


def hold_for_candidates(
    grant: ApiKeyGrant, book: PriceBook, models: Iterable[str], prompt_tokens: int, max_output_tokens: int
) -> CandidateHold:
    """Check every model a request may reach against the key and the price book, and size the hold for the most
    expensive (the shared rule, so an ingress replica spending a lease sizes each request the same way)."""
    try:
        return hold_sizing.size_for_candidates(book.prices, grant.allowed_models, models, prompt_tokens,
                                               max_output_tokens)
    except hold_sizing.SizingError as exc:
        raise _refusal(exc) from None


def _refusal(exc: hold_sizing.SizingError) -> Exception:
    if exc.failure is hold_sizing.SizingFailure.MODEL_NOT_ALLOWED:
        return ModelNotAllowed(str(exc))
    if exc.failure is hold_sizing.SizingFailure.MODEL_NOT_PRICED:
        return ModelNotPriced(str(exc))
    return InvalidArgument(str(exc))


# --- ledger -----------------------------------------------------------------------------------------------------


def ledger_transaction(
    transaction_id: str, kind: str, reference: str, postings: Iterable[tuple[str, int]], at_unix_ms: int
) -> billing_pb2.LedgerTransaction:
    """A double-entry transaction; refuses postings that do not sum to zero (the ledger's one invariant)."""
    legs = [billing_pb2.Posting(ledger_account=account, amount_nanos=amount) for account, amount in postings]
    if sum(p.amount_nanos for p in legs) != 0:
        raise ValueError(f"ledger transaction {transaction_id} does not sum to zero")
    return billing_pb2.LedgerTransaction(
        transaction_id=transaction_id, kind=str(kind), reference=reference, postings=legs, created_at_unix_ms=at_unix_ms
    )


def _charge(transaction_id: str, kind: LedgerKind, reference: str, account_id: str, amount: int,
            at_unix_ms: int) -> billing_pb2.LedgerTransaction:
    """Money from the customer's wallet to revenue."""
    return ledger_transaction(
        transaction_id, kind, reference, [(wallet_account(account_id), -amount), (REVENUE_USAGE, amount)], at_unix_ms
    )


# --- decisions --------------------------------------------------------------------------------------------------


def validate_currency(currency: str) -> str:
    code = (currency or "USD").upper()
    if not _CURRENCY.match(code):
        raise InvalidArgument(f"currency {currency!r} is not an ISO 4217 code")
    return code


def account_created(account_id: str, name: str, currency: str, at_unix_ms: int,
                    time_zone: str = "") -> billing_pb2.AccountCreated:
    if not account_id or len(account_id) > 100:
        raise InvalidArgument("account_id must be 1 to 100 characters")
    return billing_pb2.AccountCreated(
        account_id=account_id, name=name, currency=validate_currency(currency), created_at_unix_ms=at_unix_ms,
        time_zone=check_time_zone(time_zone),
    )


def api_key_created(
    *,
    key_id: str,
    account_id: str,
    key_hash: str,
    prefix: str,
    label: str,
    has_limit: bool,
    limit_nanos: int,
    allowed_models: Iterable[str],
    team: str,
    project: str,
    rate_limit_rpm: int,
    at_unix_ms: int,
    account_admin: bool = False,
    expires_at_unix_ms: int = 0,
) -> billing_pb2.ApiKeyCreated:
    if has_limit and limit_nanos < 0:
        raise InvalidArgument("limit_nanos must not be negative")
    if rate_limit_rpm < 0:
        raise InvalidArgument("rate_limit_rpm must not be negative")
    return billing_pb2.ApiKeyCreated(
        key_id=key_id,
        account_id=account_id,
        key_hash=key_hash,
        prefix=prefix,
        label=check_label(label),
        has_limit=has_limit,
        limit_nanos=limit_nanos if has_limit else 0,
        allowed_models=clean_models(allowed_models),
        team=team,
        project=project,
        rate_limit_rpm=rate_limit_rpm,
        created_at_unix_ms=at_unix_ms,
        account_admin=account_admin,
        expires_at_unix_ms=check_expiry(expires_at_unix_ms, at_unix_ms),
    )


def credits_added(
    account_id: str, amount_nanos: int, idempotency_key: str, transaction_id: str, description: str,
    at_unix_ms: int, *, credit_kind: str = "", expires_at_unix_ms: int = 0,
) -> billing_pb2.CreditsAdded:
    """Paid credit (from ``funding:external``), or a promotional one (``funding:promotional``, kind
    ``promo_credit``) that must expire in the future (see credits.py)."""
    if amount_nanos <= 0:
        raise InvalidArgument("amount_nanos must be positive")
    promotional = credit_kind == "promotional"
    if credit_kind not in ("", "paid", "promotional"):
        raise InvalidArgument("credit_kind must be 'paid' or 'promotional'")
    if promotional and expires_at_unix_ms <= at_unix_ms:
        raise InvalidArgument("a promotional credit needs an expires_at in the future")
    if not promotional and expires_at_unix_ms:
        raise InvalidArgument("only a promotional credit expires")
    txn = ledger_transaction(
        transaction_id,
        "promo_credit" if promotional else LedgerKind.CREDIT_PURCHASE,
        description or idempotency_key,
        [("funding:promotional" if promotional else FUNDING_EXTERNAL, -amount_nanos),
         (wallet_account(account_id), amount_nanos)],
        at_unix_ms,
    )
    return billing_pb2.CreditsAdded(
        account_id=account_id, idempotency_key=idempotency_key, amount_nanos=amount_nanos, transaction=txn,
        credit_kind="promotional" if promotional else "", expires_at_unix_ms=expires_at_unix_ms,
    )


def hold_placed(
    grant: ApiKeyGrant, hold_id: str, model: str, amount_nanos: int, at_unix_ms: int, ttl_seconds: int
) -> billing_pb2.HoldPlaced:
    """The hold to place; whether the money is there is decided atomically by the projection's guarded update."""
    if not hold_id or len(hold_id) > 200:
        raise InvalidArgument("request_id must be 1 to 200 characters")
    return billing_pb2.HoldPlaced(
        hold_id=hold_id,
        account_id=grant.account_id,
        key_id=grant.key_id,
        amount_nanos=amount_nanos,
        model=model,
        created_at_unix_ms=at_unix_ms,
        expires_at_unix_ms=at_unix_ms + ttl_seconds * 1000,
    )


@dataclass(frozen=True, slots=True)
class HoldView:
    """The part of a stored hold the decisions need."""

    hold_id: str
    account_id: str
    key_id: str
    amount_nanos: int
    status: HoldStatus
    captured_nanos: int
    expires_at_unix_ms: int


class UnknownUsageCharge(StrEnum):
    """What a request is charged when a provider may have served it but its usage is unknown
    (``UsageRated.usage_unknown``: a timeout, an answer refused or cut before output reached the client)."""

    #: Nothing: the operator bears whatever the provider bills.
    NONE = "none"
    #: The rated price of the prompt estimate (no output): what the provider bills at least once it took the call.
    PROMPT = "prompt"
    #: The full hold: the most the provider could have billed.
    HOLD = "hold"


def charge_for(hold_amount_nanos: int, rated: usage_pb2.UsageRated,
               unknown_usage: UnknownUsageCharge = UnknownUsageCharge.PROMPT) -> int:
    """The nanos a rated request is charged: its rated price; for unknown usage, per the operator's setting. An
    unknown-usage event without a prompt estimate (metering reconciled it from attempts of a caller that sent the
    router no ``prompt_tokens_estimate``) is charged the hold under ``prompt``: it is the only bound known."""
    rated_nanos = max(0, rated.resale_price_nanos)
    if not rated.usage_unknown:
        return rated_nanos
    if unknown_usage is UnknownUsageCharge.PROMPT and rated.usage.prompt_tokens > 0:
        return rated_nanos
    if unknown_usage is UnknownUsageCharge.NONE:
        return 0
    return max(rated_nanos, hold_amount_nanos)


def settle_usage(
    hold: HoldView, rated: usage_pb2.UsageRated, usage_event_id: str, at_unix_ms: int,
    unknown_usage: UnknownUsageCharge = UnknownUsageCharge.PROMPT,
) -> billing_pb2.HoldCaptured | billing_pb2.HoldReconciled | None:
    """What a rated usage event does to its hold (its charge: :func:`charge_for`).

    - open: charge the rated price (all of it: the rated price is what the upstream actually served, so billing
      matches the upstream's record even if the estimate behind the hold was low), release the rest;
    - expired (captured in full): refund what was captured beyond the rated price, never charge more;
    - already captured or reconciled: nothing (a second usage event for one request is not billed twice).
    """
    rated_nanos = charge_for(hold.amount_nanos, rated, unknown_usage)
    if hold.status == HoldStatus.OPEN:
        txn = None
        if rated_nanos > 0:
            txn = _charge(f"capture:{hold.hold_id}", LedgerKind.USAGE_CHARGE, hold.hold_id, hold.account_id,
                          rated_nanos, at_unix_ms)
        return billing_pb2.HoldCaptured(
            hold_id=hold.hold_id,
            account_id=hold.account_id,
            key_id=hold.key_id,
            hold_amount_nanos=hold.amount_nanos,
            captured_nanos=rated_nanos,
            released_nanos=max(0, hold.amount_nanos - rated_nanos),
            usage_event_id=usage_event_id,
            transaction=txn,
            captured_at_unix_ms=at_unix_ms,
            model=rated.model,
            project=rated.project,
        )
    if hold.status == HoldStatus.EXPIRED:
        refund = max(0, hold.captured_nanos - rated_nanos)
        txn = None
        if refund > 0:
            txn = ledger_transaction(
                f"refund:{hold.hold_id}",
                LedgerKind.HOLD_REFUND,
                hold.hold_id,
                [(REVENUE_USAGE, -refund), (wallet_account(hold.account_id), refund)],
                at_unix_ms,
            )
        return billing_pb2.HoldReconciled(
            hold_id=hold.hold_id,
            account_id=hold.account_id,
            key_id=hold.key_id,
            captured_nanos=hold.captured_nanos,
            rated_nanos=rated_nanos,
            refunded_nanos=refund,
            usage_event_id=usage_event_id,
            transaction=txn,
        )
    return None


def unheld_capture(
    hold_id: str, account_id: str, key_id: str, rated: usage_pb2.UsageRated, usage_event_id: str, at_unix_ms: int,
    unknown_usage: UnknownUsageCharge = UnknownUsageCharge.PROMPT,
) -> billing_pb2.HoldCaptured:
    """Usage for a request billing never authorized (or whose hold is lost): charge it anyway, hold amount 0."""
    rated_nanos = charge_for(0, rated, unknown_usage)
    txn = None
    if rated_nanos > 0:
        txn = _charge(f"capture:{hold_id}", LedgerKind.USAGE_CHARGE, hold_id, account_id, rated_nanos, at_unix_ms)
    return billing_pb2.HoldCaptured(
        hold_id=hold_id,
        account_id=account_id,
        key_id=key_id,
        hold_amount_nanos=0,
        captured_nanos=rated_nanos,
        released_nanos=0,
        usage_event_id=usage_event_id,
        transaction=txn,
        captured_at_unix_ms=at_unix_ms,
        model=rated.model,
        project=rated.project,
    )


def hold_expired(hold: HoldView, at_unix_ms: int) -> billing_pb2.HoldExpired | None:
    """No usage before the TTL: capture the whole hold (a late usage event refunds the difference)."""
    if hold.status != HoldStatus.OPEN or hold.expires_at_unix_ms > at_unix_ms:
        return None
    txn = None
    if hold.amount_nanos > 0:
        txn = _charge(f"expiry:{hold.hold_id}", LedgerKind.HOLD_EXPIRY_CHARGE, hold.hold_id, hold.account_id,
                      hold.amount_nanos, at_unix_ms)
    return billing_pb2.HoldExpired(
        hold_id=hold.hold_id,
        account_id=hold.account_id,
        key_id=hold.key_id,
        amount_nanos=hold.amount_nanos,
        transaction=txn,
        expired_at_unix_ms=at_unix_ms,
    )
