"""Monthly statements over HTTP: ``GET /admin/v1/accounts/{account_id}/statements/{YYYY-MM}`` (operators: any role
reads, ``read-only`` included) and the customer's ``GET /v1/statements/{YYYY-MM}`` (its own account's), each as
``?format=json`` (default), ``csv`` or ``pdf`` (statement_format.py renders billing's statement; the three agree).

The month is a calendar month in the account's time zone. Billing answers a draft (``"status": "draft"``) until the
month has ended and its usage is complete, then closes it once: a closed statement never changes and carries a
SHA-256 over the billing events it covers (also sent as the ``X-Tollgate-Statement-Sha256`` header on CSV and PDF).

Who may read the customer route: **an account admin key only** (``account_admin``). A statement is the whole
account's money — every project's charges, refunds with their reasons, credits — while an ordinary key is often
handed to one developer or one service, which should see its own usage (``/v1/usage``, ``/v1/key``) and not the
organisation's bill. That is how OpenRouter and OpenAI keep billing pages for organisation admins. Another key of
the account is 403 ``permission_denied``.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from .admin_routes import _json, require_operator
from .deps import services
from .errors import InvalidRequest, PermissionDenied
from .openai_routes import bearer_token, checked_key
from .statement_format import statement_csv, statement_json, statement_pdf

__all__ = ["router"]

router = APIRouter()

_PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
_FORMATS = ("json", "csv", "pdf")


def _checked(request: Request, period: str) -> str:
    if not _PERIOD.match(period):
        raise InvalidRequest("the statement period must be a month, YYYY-MM", param="period", code="invalid_period")
    fmt = request.query_params.get("format", "json")
    if fmt not in _FORMATS:
        raise InvalidRequest("'format' must be json, csv or pdf", param="format")
    return fmt


async def _statement(request: Request, account_id: str, period: str, fmt: str) -> Response:
    statement = await services(request).billing.statement(account_id, period)
    if fmt == "json":
        return _json(statement_json(statement))
    # Header values are latin-1: the account id (any text) only after dropping what a file name must not hold.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", account_id)[:100]
    headers = {"Content-Disposition": f'attachment; filename="statement-{name}-{period}.{fmt}"',
               "X-Tollgate-Statement-Status": "closed" if statement.closed else "draft",
               "X-Tollgate-Statement-Sha256": statement.events_sha256}
    if fmt == "csv":
        return Response(statement_csv(statement), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(statement_pdf(statement), media_type="application/pdf", headers=headers)


@router.get("/admin/v1/accounts/{account_id}/statements/{period}", dependencies=[Depends(require_operator)])
async def account_statement(account_id: str, period: str, request: Request) -> Response:
    return await _statement(request, account_id, period, _checked(request, period))


@router.get("/v1/statements/{period}")
async def own_statement(period: str, request: Request) -> Response:
    key = await checked_key(request, bearer_token(request))
    info = await services(request).keys.key_info(key)
    if not info.account_admin:
        raise PermissionDenied("Statements are for the account's admin keys (account_admin); this key may read its "
                               "own usage at /v1/usage.", code="permission_denied")
    return await _statement(request, info.account_id, period, _checked(request, period))
