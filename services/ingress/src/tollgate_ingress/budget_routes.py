"""The admin API's budgets: ``/admin/v1/accounts/{account_id}/budgets``.

A budget is a spend limit on a key, a team, a project or the whole account, per period (``daily``, ``weekly``,
``monthly`` in the account's time zone, or ``total``). Create (``{"scope", "scope_id"?, "period", "limit",
"alert_thresholds"?}``; one budget per scope, id and period: another is 409 ``budget_exists``), list, get, ``PATCH``
(``{"limit"?, "alert_thresholds"?}``; the period is fixed: delete and create to change it) and ``DELETE``.
``alert_thresholds`` are whole percentages of the limit (default ``[50, 80, 100]``, ``[]`` = none): billing emits a
``BudgetThresholdCrossed`` event when the period's spend reaches one, and the budget shows the last one crossed
(``last_crossed``). A chat request that any budget of its key's chain cannot
cover is refused with 402 ``budget_exceeded`` naming the budget, before the upstream is called. Who may call: the
operator or an ``account_admin`` key of the account, as for keys and teams.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.billing.v1 import budgets_pb2
from tollgate.events.v1 import billing_pb2

from .admin_routes import _body, _json, _str, require_account_admin
from .deps import services
from .errors import InvalidRequest
from .money import amounts, parse_amount

__all__ = ["budget_json", "router"]

#: As billing's alerts.MAX_THRESHOLDS (checked here for a clear 400 with its param, and again by billing).
MAX_THRESHOLDS = 10

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_account_admin)])

_SCOPES = {"key": billing_pb2.BUDGET_SCOPE_KEY, "team": billing_pb2.BUDGET_SCOPE_TEAM,
           "project": billing_pb2.BUDGET_SCOPE_PROJECT, "account": billing_pb2.BUDGET_SCOPE_ACCOUNT}
_PERIODS = {"daily": billing_pb2.BUDGET_PERIOD_DAILY, "weekly": billing_pb2.BUDGET_PERIOD_WEEKLY,
            "monthly": billing_pb2.BUDGET_PERIOD_MONTHLY, "total": billing_pb2.BUDGET_PERIOD_TOTAL}
_SCOPE_NAMES = {v: k for k, v in _SCOPES.items()}
_PERIOD_NAMES = {v: k for k, v in _PERIODS.items()}


def _seconds(ms: int) -> int | None:
    return ms // 1000 if ms else None


def budget_json(budget: budgets_pb2.Budget) -> dict[str, Any]:
    return {
        "object": "budget",
        "id": budget.budget_id,
        "account_id": budget.account_id,
        "scope": _SCOPE_NAMES.get(budget.scope, ""),
        "scope_id": budget.scope_id,
        "period": _PERIOD_NAMES.get(budget.period, ""),
        **amounts(limit=budget.limit_nanos, spent=budget.spent_nanos, held=budget.held_nanos,
                   remaining=budget.remaining_nanos),
        "time_zone": budget.time_zone,
        "period_start": _seconds(budget.period_start_unix_ms),
        "resets_at": _seconds(budget.resets_at_unix_ms),
        "created_at": _seconds(budget.created_at_unix_ms),
        "updated_at": _seconds(budget.updated_at_unix_ms),
        "alert_thresholds": list(budget.alert_thresholds),
        "last_crossed": {"percent": budget.last_crossed_percent, "at": _seconds(budget.last_crossed_at_unix_ms),
                         "period_start": _seconds(budget.last_crossed_period_start_unix_ms)}
        if budget.last_crossed_percent else None,
    }


def _choice(body: dict[str, Any], name: str, choices: dict[str, int]) -> int:
    value = _str(body, name, required=True)
    if value not in choices:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(choices)}", param=name, code="invalid_value")
    return choices[value]


def _limit(body: dict[str, Any]) -> int:
    if "limit" not in body:
        raise InvalidRequest("'limit' is required", param="limit", code="missing_required_parameter")
    return parse_amount(body["limit"], param="limit", allow_zero=True)


def _thresholds(body: dict[str, Any]) -> billing_pb2.AlertThresholds | None:
    """``alert_thresholds``: whole percentages 1..100, at most ten; None when absent."""
    if "alert_thresholds" not in body:
        return None
    value = body["alert_thresholds"]
    if (not isinstance(value, list) or len(value) > MAX_THRESHOLDS
            or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 100 for p in value)):
        raise InvalidRequest(f"'alert_thresholds' must be a list of at most {MAX_THRESHOLDS} whole percentages "
                             "from 1 to 100", param="alert_thresholds", code="invalid_value")
    return billing_pb2.AlertThresholds(percents=sorted(set(value)))


def _known(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown parameter '{unknown[0]}'", param=unknown[0], code="unknown_parameter")


@router.post("/accounts/{account_id}/budgets", status_code=201)
async def create_budget(account_id: str, request: Request) -> Response:
    body = await _body(request)
    _known(body, {"scope", "scope_id", "period", "limit", "alert_thresholds"})
    scope = _choice(body, "scope", _SCOPES)
    scope_id = _str(body, "scope_id", required=scope != billing_pb2.BUDGET_SCOPE_ACCOUNT)
    reply = await services(request).billing.create_budget(budgets_pb2.CreateBudgetRequest(
        account_id=account_id, scope=scope, scope_id=scope_id,  # type: ignore[arg-type]
        period=_choice(body, "period", _PERIODS), limit_nanos=_limit(body),  # type: ignore[arg-type]
        alert_thresholds=_thresholds(body)))
    return _json(budget_json(reply), 201)


@router.get("/accounts/{account_id}/budgets")
async def list_budgets(account_id: str, request: Request) -> Response:
    reply = await services(request).billing.list_budgets(budgets_pb2.ListBudgetsRequest(account_id=account_id))
    return _json({"object": "list", "account_id": account_id, "data": [budget_json(b) for b in reply.budgets]})


@router.get("/accounts/{account_id}/budgets/{budget_id}")
async def get_budget(account_id: str, budget_id: str, request: Request) -> Response:
    reply = await services(request).billing.get_budget(budgets_pb2.GetBudgetRequest(account_id=account_id,
                                                                                     budget_id=budget_id))
    return _json(budget_json(reply))


@router.patch("/accounts/{account_id}/budgets/{budget_id}")
async def update_budget(account_id: str, budget_id: str, request: Request) -> Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"limit", "alert_thresholds"})
    if unknown:
        raise InvalidRequest(f"'{unknown[0]}' cannot be changed (the limit and alert thresholds can; delete and "
                             "create a budget for another scope or period)", param=unknown[0],
                             code="unknown_parameter")
    if not body:
        raise InvalidRequest("'limit' or 'alert_thresholds' is required", param="limit",
                             code="missing_required_parameter")
    reply = await services(request).billing.update_budget(budgets_pb2.UpdateBudgetRequest(
        account_id=account_id, budget_id=budget_id, limit_nanos=_limit(body) if "limit" in body else None,
        alert_thresholds=_thresholds(body)))
    return _json(budget_json(reply))


@router.delete("/accounts/{account_id}/budgets/{budget_id}")
async def delete_budget(account_id: str, budget_id: str, request: Request) -> Response:
    reply = await services(request).billing.delete_budget(budgets_pb2.DeleteBudgetRequest(account_id=account_id,
                                                                                          budget_id=budget_id))
    return _json({**budget_json(reply), "deleted": True})
