"""The admin API's balance alert: ``/admin/v1/accounts/{account_id}/balance_alert``.

``PUT {"threshold": "10.00"}`` sets the account's "balance below X" (``0`` turns it off); ``GET`` shows it and
whether the balance is low now. Billing emits ``BalanceLow`` when a capture or an expiry takes the balance below the
threshold (once), and ``BalanceRestored`` when a credit brings it back (which arms it again). Who may call: the
operator or an ``account_admin`` key of the account, as for budgets.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.billing.v1 import alerts_pb2

from .admin_routes import _body, _json, require_account_admin
from .deps import services
from .errors import InvalidRequest
from .money import amounts, parse_amount

__all__ = ["balance_alert_json", "router"]

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_account_admin)])


def _seconds(ms: int) -> int | None:
    return ms // 1000 if ms else None


def balance_alert_json(alert: alerts_pb2.BalanceAlert) -> dict[str, Any]:
    return {
        "object": "balance_alert",
        "account_id": alert.account_id,
        "currency": alert.currency,
        **amounts(threshold=alert.threshold_nanos),
        "low": alert.low,
        "last_low_at": _seconds(alert.last_low_at_unix_ms),
        "updated_at": _seconds(alert.updated_at_unix_ms),
    }


@router.get("/accounts/{account_id}/balance_alert")
async def get_balance_alert(account_id: str, request: Request) -> Response:
    return _json(balance_alert_json(await services(request).billing.get_balance_alert(account_id)))


@router.put("/accounts/{account_id}/balance_alert")
async def set_balance_alert(account_id: str, request: Request) -> Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"threshold"})
    if unknown:
        raise InvalidRequest(f"unknown parameter '{unknown[0]}'", param=unknown[0], code="unknown_parameter")
    if "threshold" not in body:
        raise InvalidRequest("'threshold' is required", param="threshold", code="missing_required_parameter")
    threshold = parse_amount(body["threshold"], param="threshold", allow_zero=True)
    return _json(balance_alert_json(await services(request).billing.set_balance_alert(account_id, threshold)))
