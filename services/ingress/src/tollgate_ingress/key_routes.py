"""The admin API's keys: ``/admin/v1/accounts/{account_id}/keys`` — create, list, get, update, revoke, rotate.

Who may call: the operator (``INGRESS_ADMIN_TOKEN``), or an API key of that same account created with
``account_admin`` (billing's GetKeyInfo says so) — the same check as the account's DLP policy routes. A key of
another account is 403; a key id of another account is 404 (billing looks keys up within the path's account).
Credits, balances and the ledger stay operator-only (admin_routes.py), and only the operator creates a key with
``account_admin`` (an account admin cannot mint more of itself).

A key's secret appears in exactly two answers: the create and the rotate that made it. Times are unix seconds
(``expires_at`` may also be sent as an ISO 8601 string with a zone); ``null`` means never.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.billing.v1 import billing_service_pb2, key_admin_pb2

from .admin_routes import _admin_credential, _body, _is_operator, _json, _str, require_account_admin
from .deps import services
from .errors import InvalidRequest, PermissionDenied
from .money import nanos_to_text, parse_amount

__all__ = ["router"]

MAX_GRACE_SECONDS = 30 * 86_400
_MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_account_admin)])


def _unix_ms(seconds: int) -> int:
    return seconds * 1000


def _expires_at(body: dict[str, Any]) -> int:
    """``expires_at`` → unix ms (0 = never). Billing refuses a time that is not in the future."""
    value = body.get("expires_at")
    if value is None:
        return 0
    if isinstance(value, bool):
        raise InvalidRequest("'expires_at' must be unix seconds or an ISO 8601 time", param="expires_at",
                             code="invalid_type")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest("'expires_at' is not an ISO 8601 time", param="expires_at") from None
        if parsed.tzinfo is None:
            raise InvalidRequest("'expires_at' needs a time zone (e.g. 2027-01-01T00:00:00Z)", param="expires_at")
        seconds = int(parsed.timestamp())
    else:
        raise InvalidRequest("'expires_at' must be unix seconds or an ISO 8601 time", param="expires_at",
                             code="invalid_type")
    if not 1 <= seconds <= _MAX_UNIX_SECONDS:
        raise InvalidRequest("'expires_at' is out of range", param="expires_at")
    return _unix_ms(seconds)


def _models(body: dict[str, Any]) -> list[str]:
    allowed = body.get("allowed_models")
    if allowed is None:
        return []
    if not isinstance(allowed, list) or not all(isinstance(m, str) and m for m in allowed):
        raise InvalidRequest("'allowed_models' must be an array of model ids", param="allowed_models",
                             code="invalid_type")
    return allowed


def _seconds(ms: int) -> int | None:
    return ms // 1000 if ms else None


def key_json(key: key_admin_pb2.ApiKey) -> dict[str, Any]:
    """A key as the admin API shows it: never the secret."""
    return {
        "object": "api_key",
        "id": key.key_id,
        "account_id": key.account_id,
        "prefix": key.prefix,
        "label": key.label,
        "status": key.status,
        "limit": nanos_to_text(key.limit_nanos) if key.has_limit else None,
        "limit_nanos": key.limit_nanos if key.has_limit else None,
        "usage": nanos_to_text(key.usage_nanos),
        "usage_nanos": key.usage_nanos,
        "allowed_models": list(key.allowed_models),
        "team": key.team,
        "project": key.project,
        "rate_limit_rpm": key.rate_limit_rpm,
        "account_admin": key.account_admin,
        "created_at": _seconds(key.created_at_unix_ms),
        "expires_at": _seconds(key.expires_at_unix_ms),
        "revoked_at": _seconds(key.revoked_at_unix_ms),
        "updated_at": _seconds(key.updated_at_unix_ms),
        "previous_key": (
            {"prefix": key.previous_prefix, "valid_until": _seconds(key.previous_valid_until_unix_ms)}
            if key.previous_valid_until_unix_ms else None
        ),
    }


@router.post("/accounts/{account_id}/keys")
async def create_key(account_id: str, request: Request) -> Response:
    body = await _body(request)
    label = _str(body, "label")
    limit = body.get("limit")
    limit_nanos = parse_amount(limit, param="limit", allow_zero=True) if limit is not None else None
    allowed = _models(body)
    rpm = body.get("rate_limit_rpm") or 0
    if isinstance(rpm, bool) or not isinstance(rpm, int) or not 0 <= rpm <= 2**31 - 1:
        raise InvalidRequest("'rate_limit_rpm' must be a non-negative integer", param="rate_limit_rpm")
    team = _str(body, "team")
    project = _str(body, "project")
    account_admin = body.get("account_admin", False)
    if not isinstance(account_admin, bool):
        raise InvalidRequest("'account_admin' must be a boolean", param="account_admin", code="invalid_type")
    if account_admin and not _is_operator(request, _admin_credential(request)):
        raise PermissionDenied("Only the operator makes account admins.", code="permission_denied")
    expires_at = _expires_at(body)
    reply = await services(request).billing.create_key(
        billing_service_pb2.CreateApiKeyRequest(
            account_id=account_id,
            label=label,
            has_limit=limit_nanos is not None,
            limit_nanos=limit_nanos or 0,
            allowed_models=allowed,
            team=team,
            project=project,
            rate_limit_rpm=rpm,
            account_admin=account_admin,
            expires_at_unix_ms=expires_at,
        )
    )
    return _json(
        {
            "object": "api_key",
            "id": reply.key_id,
            "key": reply.api_key,  # shown this once; billing keeps only its hash
            "prefix": reply.prefix,
            "account_id": account_id,
            "label": label,
            "status": "active",
            "limit": nanos_to_text(limit_nanos) if limit_nanos is not None else None,
            "limit_nanos": limit_nanos,
            "allowed_models": allowed,
            "team": team,
            "project": project,
            "rate_limit_rpm": rpm,
            "account_admin": account_admin,
            "expires_at": _seconds(expires_at),
        },
        201,
    )


@router.get("/accounts/{account_id}/keys")
async def list_keys(account_id: str, request: Request) -> Response:
    raw = request.query_params.get("include_revoked", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest("'include_revoked' must be true or false", param="include_revoked")
    reply = await services(request).billing.list_keys(key_admin_pb2.ListApiKeysRequest(
        account_id=account_id, include_revoked=raw in ("true", "1")))
    return _json({"object": "list", "account_id": account_id, "data": [key_json(k) for k in reply.keys]})


@router.get("/accounts/{account_id}/keys/{key_id}")
async def get_key(account_id: str, key_id: str, request: Request) -> Response:
    reply = await services(request).billing.get_key(
        key_admin_pb2.GetApiKeyRequest(account_id=account_id, key_id=key_id)
    )
    return _json(key_json(reply))


@router.patch("/accounts/{account_id}/keys/{key_id}")
async def update_key(account_id: str, key_id: str, request: Request) -> Response:
    """Body: any of ``label``, ``allowed_models`` (``[]`` = every model), ``expires_at`` (``null`` = never), ``team``
    and ``project`` (a team / project id of the account; ``""`` = none)."""
    body = await _body(request)
    unknown = sorted(set(body) - {"label", "allowed_models", "expires_at", "team", "project"})
    if unknown:
        raise InvalidRequest(f"'{unknown[0]}' cannot be changed on a key (label, allowed_models, expires_at, team "
                             "and project can)", param=unknown[0], code="unknown_parameter")
    message = key_admin_pb2.UpdateApiKeyRequest(account_id=account_id, key_id=key_id)
    if "label" in body:
        message.label = _str(body, "label")
    if "allowed_models" in body:
        message.replace_allowed_models = True
        message.allowed_models.extend(_models(body))
    if "expires_at" in body:
        message.expires_at_unix_ms = _expires_at(body)
    for field in ("team", "project"):  # a group id of the account; "" or null takes the key out
        if field in body:
            setattr(message, field, _str(body, field))
    return _json(key_json(await services(request).billing.update_key(message)))


@router.delete("/accounts/{account_id}/keys/{key_id}")
async def revoke_key(account_id: str, key_id: str, request: Request) -> Response:
    """Revoke: the next request with the key is 401 (idempotent: revoking a revoked key answers it again)."""
    reply = await services(request).billing.revoke_key(
        key_admin_pb2.RevokeApiKeyRequest(account_id=account_id, key_id=key_id)
    )
    return _json(key_json(reply))


@router.post("/accounts/{account_id}/keys/{key_id}/rotate")
async def rotate_key(account_id: str, key_id: str, request: Request) -> Response:
    """Body ``{"grace_seconds": N}`` (default 0): a new secret, shown once; the old one works N seconds more."""
    body = await _body(request)
    grace = body.get("grace_seconds", 0)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_SECONDS:
        raise InvalidRequest(f"'grace_seconds' must be an integer from 0 to {MAX_GRACE_SECONDS}",
                             param="grace_seconds")
    reply = await services(request).billing.rotate_key(key_admin_pb2.RotateApiKeyRequest(
        account_id=account_id, key_id=key_id, grace_seconds=grace))
    return _json({**key_json(reply.key), "key": reply.api_key})  # the new secret, this once
