"""Billing's one exception hierarchy, mapped ONCE to gRPC status codes and stable reasons.

Every error a caller can see is a :class:`BillingError`; the transport layer turns it into a gRPC status with
trailing metadata ``tollgate-reason`` (and ``retry-after`` for rate limits), and ingress maps that to HTTP::

    BillingError
    ├── InvalidArgument          INVALID_ARGUMENT     invalid_argument
    │   ├── RequestIdConflict    INVALID_ARGUMENT     request_id_conflict
    │   ├── ModelNotPriced       INVALID_ARGUMENT     model_not_priced (no price in the book: never served free)
    │   ├── AmountOutOfRange     INVALID_ARGUMENT     amount_out_of_range (a total beyond what BIGINT holds)
    │   ├── RefundExceedsCharge  INVALID_ARGUMENT     refund_exceeds_charge (more than the request was charged)
    │   └── InvalidPeriod        INVALID_ARGUMENT     invalid_period (not YYYY-MM, or a month still to come)
    ├── InvalidApiKey            UNAUTHENTICATED      invalid_api_key
    │   ├── RevokedApiKey        UNAUTHENTICATED      api_key_revoked
    │   └── ExpiredApiKey        UNAUTHENTICATED      api_key_expired (past expires_at, or a rotation's grace)
    ├── ModelNotAllowed          PERMISSION_DENIED    model_not_allowed
    ├── NotFound                 NOT_FOUND            not_found
    │   ├── AccountNotFound      NOT_FOUND            account_not_found
    │   ├── KeyNotFound          NOT_FOUND            key_not_found (also: a key of another account)
    │   ├── GroupNotFound        NOT_FOUND            team_not_found / project_not_found
    │   ├── ChargeNotFound       NOT_FOUND            charge_not_found (no charge for that request in the account)
    │   └── BudgetNotFound       NOT_FOUND            budget_not_found (also: a budget of another account)
    ├── GroupExists              ALREADY_EXISTS       group_exists (the id is taken, with another name)
    ├── IdempotencyKeyReused     ALREADY_EXISTS       idempotency_key_reused (a credit's key, another amount)
    ├── BudgetExists             ALREADY_EXISTS       budget_exists (one budget per scope, scope id and period)
    ├── GroupArchived            FAILED_PRECONDITION  group_archived (a key cannot join an archived group)
    ├── PaymentRequired          FAILED_PRECONDITION  (abstract: money is missing)
    │   ├── InsufficientBalance  FAILED_PRECONDITION  insufficient_balance
    │   ├── KeyLimitExceeded     FAILED_PRECONDITION  key_limit_exceeded
    │   ├── BudgetExceeded       FAILED_PRECONDITION  budget_exceeded (the message names the budget's scope and id)
    │   └── CurrencyMismatch     FAILED_PRECONDITION  currency_mismatch
    ├── KeyRevoked               FAILED_PRECONDITION  key_revoked (an admin change to a revoked key)
    ├── RateLimited              RESOURCE_EXHAUSTED   rate_limited (+ retry-after seconds)
    ├── PriceBookUnavailable     UNAVAILABLE          price_book_unavailable
    ├── ConcurrentUpdate         ABORTED              concurrent_update (retryable; the consumer retries the batch)
    └── InconsistentEvent        INTERNAL             inconsistent_event (an event does not fit the stored state)
"""

from __future__ import annotations

import grpc

__all__ = [
    "AccountNotFound",
    "AmountOutOfRange",
    "BillingError",
    "BudgetExceeded",
    "BudgetExists",
    "BudgetNotFound",
    "ChargeNotFound",
    "ConcurrentUpdate",
    "CurrencyMismatch",
    "ExpiredApiKey",
    "GroupArchived",
    "GroupExists",
    "GroupNotFound",
    "IdempotencyKeyReused",
    "InconsistentEvent",
    "InsufficientBalance",
    "InvalidApiKey",
    "InvalidArgument",
    "InvalidPeriod",
    "KeyLimitExceeded",
    "KeyNotFound",
    "KeyRevoked",
    "ModelNotAllowed",
    "ModelNotPriced",
    "NotFound",
    "PaymentRequired",
    "PriceBookUnavailable",
    "RateLimited",
    "RefundExceedsCharge",
    "RequestIdConflict",
    "RevokedApiKey",
]


class BillingError(Exception):
    """Base of every error billing reports to a caller. ``status`` and ``reason`` are the wire contract."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"
    retry_after: int | None = None


class InvalidArgument(BillingError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class RequestIdConflict(InvalidArgument):
    """A request id already names a hold of another key: ids must be unique per request."""

    reason = "request_id_conflict"


class ModelNotPriced(InvalidArgument):
    """The price book has no price for the model: refusing it is the only alternative to serving it free (the
    hold would be zero and metering would rate it at zero). Ingress answers 404 ``model_not_found`` instead when
    the router's catalogue does not know the model either."""

    reason = "model_not_priced"


class AmountOutOfRange(InvalidArgument):
    """A total would exceed 2^63 − 1 nanos, the most a BIGINT column holds (SQLite would silently turn it into a
    REAL, PostgreSQL would fail the statement): refused before anything is written."""

    reason = "amount_out_of_range"


class RefundExceedsCharge(InvalidArgument):
    """A refund beyond what the request was charged (less what was refunded already)."""

    reason = "refund_exceeds_charge"


class InvalidPeriod(InvalidArgument):
    """A statement period that is not ``YYYY-MM``, or a month that has not begun."""

    reason = "invalid_period"


class InvalidApiKey(BillingError):
    status = grpc.StatusCode.UNAUTHENTICATED
    reason = "invalid_api_key"


class RevokedApiKey(InvalidApiKey):
    reason = "api_key_revoked"


class ExpiredApiKey(InvalidApiKey):
    reason = "api_key_expired"


class ModelNotAllowed(BillingError):
    status = grpc.StatusCode.PERMISSION_DENIED
    reason = "model_not_allowed"


class NotFound(BillingError):
    status = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class AccountNotFound(NotFound):
    reason = "account_not_found"




class KeyNotFound(NotFound):
    reason = "key_not_found"


class GroupNotFound(NotFound):
    def __init__(self, kind: str, group_id: str) -> None:
        super().__init__(f"{kind} {group_id!r} not found in this account")
        self.reason = f"{kind}_not_found"


class ChargeNotFound(NotFound):
    """No charge for that request id in the account (another account's request is not found either)."""

    reason = "charge_not_found"


class BudgetNotFound(NotFound):
    reason = "budget_not_found"


class BudgetExists(BillingError):
    """A scope has at most one budget per period (a daily and a monthly one on the same team, not two daily)."""

    status = grpc.StatusCode.ALREADY_EXISTS
    reason = "budget_exists"


class GroupExists(BillingError):
    status = grpc.StatusCode.ALREADY_EXISTS
    reason = "group_exists"


class IdempotencyKeyReused(BillingError):
    """An idempotency key already names a credit of another amount: a replay would hide the difference, a second
    credit would break the key's promise (ingress answers 409)."""

    status = grpc.StatusCode.ALREADY_EXISTS
    reason = "idempotency_key_reused"


class GroupArchived(BillingError):
    """An archived team or project takes no new keys (ingress answers 409)."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = "group_archived"


class KeyRevoked(BillingError):
    """A revoked key is final: it is not updated or rotated (ingress answers 409)."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = "key_revoked"


class PaymentRequired(BillingError):
    """The money to cover the request is not there (ingress answers 402)."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = "payment_required"


class InsufficientBalance(PaymentRequired):
    reason = "insufficient_balance"


class KeyLimitExceeded(PaymentRequired):
    reason = "key_limit_exceeded"


class BudgetExceeded(PaymentRequired):
    """A budget of the key's chain cannot cover the hold (ingress answers 402 ``budget_exceeded``)."""

    reason = "budget_exceeded"

    def __init__(self, message: str, *, scope: str, scope_id: str, budget_id: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.scope_id = scope_id
        self.budget_id = budget_id


class CurrencyMismatch(PaymentRequired):
    """The price book is in another currency than the account and billing holds no exchange rate for it."""

    reason = "currency_mismatch"


class RateLimited(BillingError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PriceBookUnavailable(BillingError):
    status = grpc.StatusCode.UNAVAILABLE
    reason = "price_book_unavailable"


class ConcurrentUpdate(BillingError):
    """A guarded write found the row changed under it (e.g. the sweeper expired a hold being captured)."""

    status = grpc.StatusCode.ABORTED
    reason = "concurrent_update"


class InconsistentEvent(BillingError):
    """An event names rows that are not there (or not in the state it expects): a broken log or a broken DB."""

    status = grpc.StatusCode.INTERNAL
    reason = "inconsistent_event"
