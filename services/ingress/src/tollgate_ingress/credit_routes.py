"""The admin API's money corrections: refunds and credit notes, and the terms of a promotional credit.

* ``POST /admin/v1/accounts/{account_id}/refunds`` ``{"request_id", "amount", "reason", "idempotency_key"}``: give
  back (part of) what one request was charged (billing's RefundCharge: a ledger reversal, at most the charge less
  earlier refunds, else 400 ``refund_exceeds_charge``; a request of another account, unknown or still open is 404
  ``charge_not_found``).
* ``POST /admin/v1/accounts/{account_id}/credit_notes`` ``{"period": "YYYY-MM", "amount", "reason",
  "idempotency_key"}``: a goodwill credit against a month (not after the current one in the account's time zone);
  it is on the statement of the month it is issued in, naming the period it is against.
* ``POST /admin/v1/accounts/{account_id}/credits`` (admin_routes.py) takes ``kind`` (``paid``, the default, or
  ``promotional``) and, for a promotional credit, ``expires_at`` (unix seconds or ISO 8601 with a zone, ahead of
  now): :func:`credit_terms` reads them.

All are idempotent on ``idempotency_key`` (Stripe's semantics, as AddCredits): the same key and body returns the first
result with ``"replayed": true`` and moves no money; the same key with another body is 409
``idempotency_key_reused``. Who may call: operators only, writes need the ``owner`` or ``billing`` role (a
``read-only`` or ``policy`` operator is 403 ``insufficient_role``); an account admin key never moves money (401,
as on credits), since it would credit its own account.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.billing.v1 import statements_pb2

from .admin_routes import _body, _json, _str, require_operator
from .deps import services
from .errors import InvalidRequest
from .money import amounts, parse_amount

__all__ = ["credit_terms", "router"]

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_operator)])

_KINDS = ("paid", "promotional")
_REFUND_FIELDS = frozenset({"request_id", "amount", "reason", "idempotency_key"})
_CREDIT_NOTE_FIELDS = frozenset({"period", "amount", "reason", "idempotency_key"})


def credit_terms(body: dict[str, Any]) -> tuple[str, int]:
    """``kind`` and ``expires_at`` of a credit → (billing's credit_kind, expiry in unix ms; 0 for a paid credit).
    A promotional credit must expire (billing checks the time lies ahead); a paid credit never does."""
    from .key_routes import _expires_at  # the same time forms as a key's expiry

    kind = _str(body, "kind", default="paid")
    if kind not in _KINDS:
        raise InvalidRequest("'kind' must be paid or promotional", param="kind")
    expires_at = _expires_at(body)
    if kind == "promotional" and not expires_at:
        raise InvalidRequest("a promotional credit needs 'expires_at'", param="expires_at",
                             code="missing_required_parameter")
    if kind == "paid" and expires_at:
        raise InvalidRequest("only a promotional credit expires", param="expires_at")
    return ("promotional" if kind == "promotional" else ""), expires_at


def _fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown parameter '{unknown[0]}'", param=unknown[0], code="unknown_parameter")
    for name in sorted(allowed - {"amount"}):
        _str(body, name, required=True)
    if "amount" not in body:
        raise InvalidRequest("'amount' is required", param="amount", code="missing_required_parameter")


def _adjustment(kind: str, account_id: str, reply: Any, reason: str, **extra: str) -> dict[str, Any]:
    return {
        "object": kind,
        "id": reply.refund_id if kind == "refund" else reply.credit_note_id,
        "account_id": account_id,
        **extra,
        "transaction_id": reply.transaction_id,
        **amounts(amount=reply.amount_nanos, balance=reply.balance_nanos),
        "reason": reason.strip(),
        "replayed": reply.replayed,
        "created_at": reply.created_at_unix_ms // 1000,
    }


@router.post("/accounts/{account_id}/refunds")
async def refund_charge(account_id: str, request: Request) -> Response:
    body = await _body(request)
    _fields(body, _REFUND_FIELDS)
    amount = parse_amount(body["amount"], param="amount")
    reply = await services(request).billing.refund_charge(statements_pb2.RefundChargeRequest(
        account_id=account_id, refund_id=body["idempotency_key"], request_id=body["request_id"],
        amount_nanos=amount, reason=body["reason"]))
    return _json(_adjustment("refund", account_id, reply, body["reason"], request_id=body["request_id"]))


@router.post("/accounts/{account_id}/credit_notes")
async def issue_credit_note(account_id: str, request: Request) -> Response:
    body = await _body(request)
    _fields(body, _CREDIT_NOTE_FIELDS)
    amount = parse_amount(body["amount"], param="amount")
    reply = await services(request).billing.issue_credit_note(statements_pb2.IssueCreditNoteRequest(
        account_id=account_id, credit_note_id=body["idempotency_key"], period=body["period"], amount_nanos=amount,
        reason=body["reason"]))
    return _json(_adjustment("credit_note", account_id, reply, body["reason"], period=body["period"]))
