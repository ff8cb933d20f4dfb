"""Usage analytics over HTTP: ``GET /admin/v1/accounts/{account_id}/usage`` (the operator, or an account admin key
of that account) and ``GET /v1/usage`` (the calling key's own usage, OpenRouter's activity export).

Both read metering's usage report (``GetUsageReport``: rated usage, the read model rebuilt from the usage log),
summed by ``group_by`` over ``[from, to)``, a page at a time, as JSON or CSV. Query parameters:

* ``from`` / ``to``: ``YYYY-MM-DD`` (00:00 UTC), an ISO 8601 time with a timezone, or unix seconds; default the
  30 days up to now;
* ``group_by``: comma-separated (or repeated) ``day``, ``model``, ``key``, ``team``, ``project``, ``tag`` (each
  ``name=value`` tag is a group: a request with two tags is counted in both) or ``tag:<name>``; none = one total
  row per currency;
* ``format``: ``json`` (default) or ``csv``; ``limit`` 1…10000 (100); ``page_token`` from the previous page
  (JSON ``next_page_token``, CSV header ``X-Next-Page-Token``).

The admin report carries upstream cost, resale price and margin. ``/v1/usage`` is a customer's view: what the key
was charged (``cost``), never what the upstream cost the operator nor the margin (a reseller's numbers).
"""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.metering.v1 import metering_service_pb2 as mpb

from .admin_routes import require_account_admin
from .deps import services
from .errors import InvalidRequest, ServiceUnavailable
from .money import nanos_to_text
from .openai_routes import bearer_token, checked_key

__all__ = ["router"]

JSON = "application/json"
_DAY_MS = 86_400_000
_DEFAULT_WINDOW_MS = 30 * _DAY_MS
_GROUPS = ("day", "model", "key", "team", "project")
_TOKENS = ("requests", "prompt_tokens", "cached_prompt_tokens", "cache_write_tokens", "completion_tokens",
           "reasoning_tokens")
#: (field in the response, field of UsageReportRow): money the admin report shows; the customer sees only cost.
_ADMIN_MONEY = (("upstream_cost", "upstream_cost_nanos"), ("resale_price", "resale_price_nanos"),
                ("margin", "margin_nanos"))
_CUSTOMER_MONEY = (("cost", "resale_price_nanos"),)
#: ASCII digits only (``str.isdigit`` accepts "²", which ``int`` refuses), at most 9999-12-31 in seconds.
_DIGITS = re.compile(r"^[0-9]{1,12}$")
_MAX_UNIX_SECONDS = 253_402_300_799

router = APIRouter()


def _time(request: Request, name: str, default_ms: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default_ms
    value = raw.strip()
    if _DIGITS.match(value) and int(value) <= _MAX_UNIX_SECONDS:
        return int(value) * 1000
    try:
        if len(value) == 10:  # YYYY-MM-DD
            when = datetime.fromisoformat(value).replace(tzinfo=UTC)
        else:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidRequest(f"'{name}' must be YYYY-MM-DD, an ISO 8601 time with a timezone, or unix seconds",
                             param=name)
    return int(when.timestamp() * 1000)


def _query(request: Request) -> tuple[int, int, list[str], str, int, str]:
    now = int(time.time() * 1000)
    to_ms = _time(request, "to", now)
    from_ms = _time(request, "from", to_ms - _DEFAULT_WINDOW_MS)
    if not 0 <= from_ms < to_ms:
        raise InvalidRequest("'from' must be before 'to' (and not before 1970)", param="from")
    group_by = [g.strip() for raw in request.query_params.getlist("group_by") for g in raw.split(",") if g.strip()]
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("'format' must be json or csv", param="format")
    raw_limit = request.query_params.get("limit", "100")
    if not _DIGITS.match(raw_limit) or not 1 <= int(raw_limit) <= 10_000:
        raise InvalidRequest("'limit' must be an integer from 1 to 10000", param="limit")
    return from_ms, to_ms, group_by, fmt, int(raw_limit), request.query_params.get("page_token", "")


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _row(r: mpb.UsageReportRow, group_by: list[str], money: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in group_by:
        if g == "key":
            out["key_id"] = r.key_id
        elif g in _GROUPS:
            out[g] = getattr(r, g)
        else:
            out["tag"] = r.tag
    out["currency"] = r.currency
    for name in _TOKENS:
        out[name] = getattr(r, name)
    for name, field in money:
        nanos = getattr(r, field)
        out[name] = nanos_to_text(nanos)
        out[f"{name}_nanos"] = nanos
    return out


async def _report(request: Request, account_id: str, key_id: str, money: tuple[tuple[str, str], ...],
                  extra: dict[str, Any]) -> Response:
    from_ms, to_ms, group_by, fmt, limit, token = _query(request)
    metering = services(request).metering
    if metering is None:
        raise ServiceUnavailable("usage analytics are not configured (INGRESS_METERING_ADDR)")
    reply = await metering.usage_report(account_id, key_id, from_ms, to_ms, group_by, limit, token)
    rows = [_row(r, group_by, money) for r in reply.rows]
    if fmt == "csv":
        out = io.StringIO()
        names = list(rows[0]) if rows else list(_row(mpb.UsageReportRow(), group_by, money))
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        # Header values are latin-1: the account id (any text) only after dropping what a file name must not hold.
        name = re.sub(r"[^A-Za-z0-9._-]", "_", account_id)[:100]
        headers = {"Content-Disposition": f'attachment; filename="usage-{name}.csv"'}
        if reply.next_page_token:
            headers["X-Next-Page-Token"] = reply.next_page_token
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
    payload = {
        "object": "list", **extra, "from": _iso(from_ms), "to": _iso(to_ms), "group_by": group_by, "data": rows,
        "has_more": bool(reply.next_page_token), "next_page_token": reply.next_page_token or None,
    }
    return Response(orjson.dumps(payload), media_type=JSON)


@router.get("/admin/v1/accounts/{account_id}/usage", dependencies=[Depends(require_account_admin)])
async def account_usage(account_id: str, request: Request) -> Response:
    return await _report(request, account_id, "", _ADMIN_MONEY, {"account_id": account_id})


@router.get("/v1/usage")
async def key_usage(request: Request) -> Response:
    key = await checked_key(request, bearer_token(request))
    info = await services(request).keys.key_info(key)
    return await _report(request, info.account_id, info.key_id, _CUSTOMER_MONEY, {"key_id": info.key_id})
