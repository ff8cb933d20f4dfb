"""Promotional credits, refunds and credit notes: the decisions (pure, no I/O).

Why these three live together: each puts money back into (or takes it out of) a wallet outside the request path,
each is idempotent on a client-supplied id, and each shows on the monthly statement as its own line.

- **Promotional credit**: ``AddCredits`` with ``credit_kind="promotional"`` and an ``expires_at``. Ledger kind
  ``promo_credit`` from ``funding:promotional``. It is spent **before** paid credit (what OpenAI and Stripe's credit
  grants do: the money that expires first goes first), grant by grant in order of expiry. What is left of it at its
  expiry leaves the wallet by ``promo_expired`` (``PromoCreditExpired``, once per grant, written by the sweeper).
  How much is left is :func:`promo_remaining`: a replay of the account's wallet postings in ledger order, so the
  hot path (Authorize, captures) does no per-request work for promotions at all.
- **Refund**: a ledger reversal of (part of) one request's charge: ``revenue:usage → wallet``, kind ``refund``,
  at most what the request was charged less what was refunded before (:func:`refundable`). Key usage and budget
  spend are not rolled back: a refund is money returned, not usage undone (as in Stripe).
- **Credit note**: a goodwill credit against a statement period: ``expense:credit_notes → wallet``, kind
  ``credit_note``. It shows on the statement of the month it is issued in (a closed statement never changes) and
  names the period it is against.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from tollgate.events.v1 import billing_pb2

from .domain import INT64_MAX, REVENUE_USAGE, LedgerKind, ledger_transaction, wallet_account
from .errors import InvalidArgument, RefundExceedsCharge

__all__ = [
    "CREDIT_NOTE_EXPENSE",
    "PROMO_FUNDING",
    "CreditKind",
    "MoneyKind",
    "WalletPosting",
    "charge_refunded",
    "check_adjustment_id",
    "credit_note_issued",
    "promo_expired",
    "promo_remaining",
    "refundable",
]

PROMO_FUNDING = "funding:promotional"
CREDIT_NOTE_EXPENSE = "expense:credit_notes"
MAX_REASON = 500
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


class CreditKind(StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


class MoneyKind(StrEnum):
    """Ledger kinds added here (the older ones are :class:`~tollgate_billing.domain.LedgerKind`)."""

    PROMO_CREDIT = "promo_credit"
    PROMO_EXPIRED = "promo_expired"
    REFUND = "refund"
    CREDIT_NOTE = "credit_note"


#: Kinds that charge a request (their reference is the request id) and the kind that reconciles an expiry charge.
CHARGE_KINDS = frozenset({LedgerKind.USAGE_CHARGE.value, LedgerKind.HOLD_EXPIRY_CHARGE.value})


def check_adjustment_id(name: str, value: str) -> str:
    if not _ID.match(value or ""):
        raise InvalidArgument(f"{name} must be 1 to 100 letters, digits or _.:-")
    return value


def _reason(reason: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise InvalidArgument("reason is required")
    if len(text) > MAX_REASON:
        raise InvalidArgument(f"reason must be at most {MAX_REASON} characters")
    return text


def _amount(amount_nanos: int) -> int:
    if amount_nanos <= 0:
        raise InvalidArgument("amount_nanos must be positive")
    if amount_nanos > INT64_MAX:
        raise InvalidArgument("amount_nanos does not fit in 64 bits")
    return amount_nanos


# --- promotional credits ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletPosting:
    """One posting on an account's wallet, with its transaction's kind and reference, in ledger order."""

    transaction_id: str
    kind: str
    reference: str
    amount_nanos: int
    at_unix_ms: int


@dataclass
class _Grant:
    expires_at: int
    remaining: int
    expired: bool = False


@dataclass
class _Allocation:
    grants: dict[str, _Grant] = field(default_factory=dict)
    #: reference (request id) -> [(grant, nanos)] it was charged from, for refunds to give promo money back.
    drawn: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def promo_remaining(postings: Iterable[WalletPosting], expires_at: Mapping[str, int]) -> dict[str, int]:
    """What is left of each promotional grant after ``postings`` (the account's wallet postings in ledger order).

    A debit (a charge) is taken from the grants that are live at its time (granted, not past their expiry, not
    yet expired by the sweeper), the one expiring first first (then the older grant), the rest from paid money.
    A credit with the reference of an earlier charge (a hold refund after a late usage event, a refund) gives back
    to the grants that charge drew on, newest draw first, while they are live; the rest is paid money. Paid
    credits and credit notes are paid money. ``expires_at``: grant transaction id -> its expiry (unix ms).
    """
    state = _Allocation()
    for p in postings:
        if p.kind == MoneyKind.PROMO_CREDIT:
            state.grants[p.transaction_id] = _Grant(expires_at.get(p.transaction_id, 0), p.amount_nanos)
        elif p.kind == MoneyKind.PROMO_EXPIRED:
            grant = state.grants.get(p.reference)
            if grant is not None:
                grant.expired, grant.remaining = True, 0
        elif p.amount_nanos < 0:
            _draw(state, p)
        elif p.amount_nanos > 0 and p.reference in state.drawn:
            _give_back(state, p)
    return {grant_id: g.remaining for grant_id, g in state.grants.items()}


def _live(grant: _Grant, at: int) -> bool:
    return not grant.expired and grant.remaining > 0 and at < grant.expires_at


def _draw(state: _Allocation, p: WalletPosting) -> None:
    need = -p.amount_nanos
    live = sorted((g.expires_at, grant_id) for grant_id, g in state.grants.items() if _live(g, p.at_unix_ms))
    for _, grant_id in live:
        if need == 0:
            break
        grant = state.grants[grant_id]
        take = min(grant.remaining, need)
        grant.remaining -= take
        need -= take
        state.drawn.setdefault(p.reference, []).append((grant_id, take))


def _give_back(state: _Allocation, p: WalletPosting) -> None:
    back = p.amount_nanos
    draws = state.drawn[p.reference]
    while back and draws:
        grant_id, took = draws.pop()
        grant = state.grants[grant_id]
        give = min(took, back)
        back -= give
        if give < took:
            draws.append((grant_id, took - give))
        if not grant.expired and p.at_unix_ms < grant.expires_at:
            grant.remaining += give


def promo_expired(
    account_id: str, grant_transaction_id: str, granted_nanos: int, remaining_nanos: int, available_nanos: int,
    at_unix_ms: int,
) -> billing_pb2.PromoCreditExpired:
    """The expiry of one grant: what is left of it leaves the wallet, but never more than the wallet has free.

    Why the cap at ``available`` (balance − open holds): a request in flight may be holding promotional money;
    taking it away under the hold would let that request be served beyond what the account can pay. What such a
    hold later releases stays in the balance (a bounded leak in the customer's favour, written down in the README).
    """
    expired = max(0, min(remaining_nanos, available_nanos))
    txn = None
    if expired > 0:
        txn = ledger_transaction(
            f"promo-expiry:{grant_transaction_id}", MoneyKind.PROMO_EXPIRED, grant_transaction_id,
            [(wallet_account(account_id), -expired), (PROMO_FUNDING, expired)], at_unix_ms,
        )
    return billing_pb2.PromoCreditExpired(
        account_id=account_id, grant_transaction_id=grant_transaction_id, granted_nanos=granted_nanos,
        expired_nanos=expired, transaction=txn, expired_at_unix_ms=at_unix_ms,
    )


# --- refunds and credit notes -----------------------------------------------------------------------------------


def refundable(charged_nanos: int, refunded_nanos: int) -> int:
    """What one request's charge can still be refunded: its charge (captures and expiry charges less their hold
    refunds) less the refunds already made."""
    return max(0, charged_nanos - refunded_nanos)


def charge_refunded(
    account_id: str, refund_id: str, request_id: str, amount_nanos: int, reason: str, charged_nanos: int,
    refunded_nanos: int, at_unix_ms: int,
) -> billing_pb2.ChargeRefunded:
    check_adjustment_id("refund_id", refund_id)
    amount = _amount(amount_nanos)
    left = refundable(charged_nanos, refunded_nanos)
    if amount > left:
        raise RefundExceedsCharge(
            f"request {request_id} was charged {charged_nanos} nanos and {refunded_nanos} were refunded already: "
            f"at most {left} nanos can be refunded"
        )
    txn = ledger_transaction(
        f"charge-refund:{account_id}:{refund_id}", MoneyKind.REFUND, request_id,
        [(REVENUE_USAGE, -amount), (wallet_account(account_id), amount)], at_unix_ms,
    )
    return billing_pb2.ChargeRefunded(account_id=account_id, refund_id=refund_id, request_id=request_id,
                                      amount_nanos=amount, reason=_reason(reason), transaction=txn)


def credit_note_issued(
    account_id: str, credit_note_id: str, period: str, amount_nanos: int, reason: str, at_unix_ms: int,
) -> billing_pb2.CreditNoteIssued:
    """``period`` is checked by the caller (statements.parse_period and 'not in the future')."""
    check_adjustment_id("credit_note_id", credit_note_id)
    amount = _amount(amount_nanos)
    txn = ledger_transaction(
        f"credit-note:{account_id}:{credit_note_id}", MoneyKind.CREDIT_NOTE, period,
        [(CREDIT_NOTE_EXPENSE, -amount), (wallet_account(account_id), amount)], at_unix_ms,
    )
    return billing_pb2.CreditNoteIssued(account_id=account_id, credit_note_id=credit_note_id, period=period,
                                        amount_nanos=amount, reason=_reason(reason), transaction=txn)
