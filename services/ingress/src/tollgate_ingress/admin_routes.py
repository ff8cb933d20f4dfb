"""The admin API under ``/admin/v1/``: accounts, keys, credits, balances, ledger, DLP policy.

Who may call what (two routers, one dependency each):

* accounts, credits, balances, ledger: operators only, ``Authorization: Bearer $INGRESS_ADMIN_TOKEN`` (compared
  in constant time) or a named operator token (``INGRESS_OPERATORS``, see operators.py: roles owner, billing,
  policy, read-only; a role that may not is 403 ``insufficient_role``). Any other credential, API keys included,
  is 401 ``invalid_admin_token``; these routes never look a key up.
* an account's keys (key_routes.py) and DLP policy (``/accounts/{account_id}/policy…``, ``teams/…/policy``,
  ``keys/…/policy``, shadow, promote, discard, versions): an operator whose role covers it, or an API key of that
  account created with ``account_admin`` (billing's GetKeyInfo says so). An unknown key is 401; a valid key that
  is not an admin of the path's account is 403 ``permission_denied``.

Bodies are parsed with
exact decimals, so an amount sent as the JSON number ``0.1`` is one tenth, not a float near it.

Amounts in responses come twice: ``"<name>"`` as the shortest exact decimal string in the account's currency
(``"10"``, ``"0.25"``, ``"-0.000000125"``) and ``"<name>_nanos"`` as the integer in nano-units.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.billing.v1 import key_admin_pb2
from tollgate.policy.v1 import policy_service_pb2

from .deps import services
from .errors import InvalidRequest, NotFound
from .json_depth import TOO_DEEP, nests_too_deep
from .money import amounts, parse_amount
from .openai_routes import read_body
from .operators import Area, account_admin_gate, admin_credential, operator_gate

__all__ = ["router"]

JSON = "application/json"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_ACTIONS = {
    "allow": policy_service_pb2.ACTION_ALLOW,
    "redact": policy_service_pb2.ACTION_REDACT,
    "block": policy_service_pb2.ACTION_BLOCK,
    "flag": policy_service_pb2.ACTION_FLAG,
}
_ACTION_NAMES = {v: k for k, v in _ACTIONS.items()}


#: The gates (tollgate_ingress.operators); kept under these names for the route modules that import them.
_admin_credential = admin_credential
#: Accounts, credits, balances, ledger: operators only; writes need owner or billing.
require_operator = operator_gate(Area.BILLING)
#: Keys, budgets, teams and projects, usage: an operator (writes: owner or billing) or the account's admin key.
require_account_admin = account_admin_gate(Area.BILLING)
#: DLP policy: an operator (writes: owner or policy) or the account's admin key.
require_policy_admin = account_admin_gate(Area.POLICY)


def _is_operator(request: Request, token: str) -> bool:
    """True for a named operator whose role may write billing settings (owner, billing); not for a key."""
    found = services(request).operators.find(token)
    return found is not None and found.may(Area.BILLING, "POST")


router = APIRouter(prefix="/admin/v1")
#: Accounts, credits, balances, ledger.
operator_router = APIRouter(dependencies=[Depends(require_operator)])
#: An account's DLP policy; every path has ``{account_id}``, which require_account_admin checks the key against.
policy_router = APIRouter(dependencies=[Depends(require_policy_admin)])


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, services(request).settings.max_body_bytes)
    try:
        body = json.loads(raw or b"{}", parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # Python's json stops near 1,000 levels
        body = None
    if body is None or nests_too_deep(body):
        raise InvalidRequest(TOO_DEEP, code="nesting_too_deep")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_type")
    return body


def _str(body: dict[str, Any], name: str, *, required: bool = False, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required", param=name, code="missing_required_parameter")
        return default
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name, code="invalid_type")
    if required and not value.strip():
        raise InvalidRequest(f"'{name}' must not be empty", param=name, code="invalid_value")
    return value


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON)


@operator_router.post("/accounts")
async def create_account(request: Request) -> Response:
    body = await _body(request)
    name = _str(body, "name", required=True)
    currency = _str(body, "currency", default="USD").upper()
    if not _CURRENCY.match(currency):
        raise InvalidRequest("'currency' must be an ISO 4217 code such as USD", param="currency")
    account_id = _str(body, "id")
    time_zone = _str(body, "time_zone", default="UTC")  # billing checks it is an IANA zone (400 if not)
    account = await services(request).billing.create_account(name, currency, account_id, time_zone)
    return _json(
        {
            "object": "account",
            "id": account.account_id,
            "name": account.name,
            "currency": account.currency,
            "time_zone": account.time_zone or "UTC",
            "created_at_unix_ms": account.created_at_unix_ms,
        },
        201,
    )


@operator_router.post("/accounts/{account_id}/credits")
async def add_credits(account_id: str, request: Request) -> Response:
    body = await _body(request)
    if "amount" not in body:
        raise InvalidRequest("'amount' is required", param="amount", code="missing_required_parameter")
    amount = parse_amount(body["amount"], param="amount")
    idempotency_key = _str(body, "idempotency_key", required=True)
    description = _str(body, "description")
    from .credit_routes import credit_terms  # kind and expires_at of a promotional credit

    kind, expires_at = credit_terms(body)
    reply = await services(request).billing.add_credits(account_id, amount, idempotency_key, description, kind,
                                                        expires_at)
    return _json(
        {
            "object": "credit",
            "account_id": account_id,
            "transaction_id": reply.transaction_id,
            **amounts(amount=amount, balance=reply.balance_nanos),
            "kind": kind or "paid",
            "expires_at": expires_at // 1000 if expires_at else None,
            "replayed": reply.replayed,
        }
    )


@operator_router.get("/accounts/{account_id}/balance")
async def get_balance(account_id: str, request: Request) -> Response:
    reply = await services(request).billing.balance(account_id)
    return _json(
        {
            "object": "balance",
            "account_id": reply.account_id or account_id,
            "currency": reply.currency,
            **amounts(balance=reply.balance_nanos, held=reply.held_nanos, available=reply.available_nanos),
        }
    )


@operator_router.get("/accounts/{account_id}/ledger")
async def get_ledger(account_id: str, request: Request) -> Response:
    """Newest first, ``limit`` per page (default and most 1000); ``next_page_token`` (a cursor: entries written
    meanwhile never shift a page) gives the next, older page, until it is null."""
    raw_limit = request.query_params.get("limit", "1000")
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit) or not 1 <= int(raw_limit) <= 1000:
        raise InvalidRequest("'limit' must be an integer from 1 to 1000", param="limit")
    token = request.query_params.get("page_token", "")
    reply = await services(request).billing.ledger(account_id, int(raw_limit), token)
    entries = [
        {
            "transaction_id": e.transaction_id,
            "kind": e.kind,
            "ledger_account": e.ledger_account,
            **amounts(amount=e.amount_nanos),
            "reference": e.reference,
            "created_at_unix_ms": e.created_at_unix_ms,
        }
        for e in reply.entries
    ]
    return _json({"object": "list", "account_id": account_id, "entries": entries,
                  "has_more": bool(reply.next_page_token), "next_page_token": reply.next_page_token or None})


# --- DLP policy ---------------------------------------------------------------------------------------------
# An account's policy is one versioned document with three kinds of scope (account, team, key; see the policy
# service's README). Each PUT replaces one scope's settings and makes a new version; a shadow version is only
# evaluated and recorded until promoted or discarded. Bodies are the scope's document:
#     {"rules": {"<detector>": "allow"|"flag"|"redact"|"block"},
#      "routing": {"allowed_models": [...], "allowed_providers": [...], "denied_providers": [...],
#                  "allowed_regions": [...]},
#      "when_found": [{"types": ["<detector>", ...], "allowed_regions": ["eu"], ...}]}
# The older form {"rules": [{"detector", "action"}]} on the account still works (it replaces the account's rules).


def _policy_json(
    account_id: str, policy: policy_service_pb2.PolicySet, effective_json: str = ""
) -> Response:
    payload: dict[str, Any] = {
        "object": "policy",
        "account_id": policy.account_id or account_id,
        "version": policy.version,
        "rules": [{"detector": r.detector, "action": _ACTION_NAMES.get(r.action, "unspecified")} for r in policy.rules],
    }
    if effective_json:
        effective = json.loads(effective_json)
        payload.update(
            sources={r.detector: r.source for r in policy.rules},
            scope=effective["scope"],
            routing=effective["routing"],
            when_found=effective["when_found"],
            document=effective["document"],
            shadow_version=effective["shadow_version"],
        )
    return _json(payload)


def _version_json(version: policy_service_pb2.PolicyVersion) -> dict[str, Any]:
    return {
        "object": "policy.version",
        "account_id": version.account_id,
        "version": version.version,
        "kind": version.kind,
        "document": json.loads(version.document_json or "{}"),
        "created_at": version.created_at_unix_ms // 1000,
    }


async def _document(request: Request) -> str:
    """The body as a scope document (policy validates its content); JSON text for PutScopePolicy."""
    body = await _body(request)
    return json.dumps(body, default=str)  # Decimal numbers have no place in a policy; policy refuses them


async def _key_of_account(request: Request, account_id: str, key_id: str) -> None:
    """A key scope must name a key of the path's account: billing looks the id up within that account, so an
    unknown id, or another account's key, is billing's NOT_FOUND (404) and nothing is written. Otherwise an account
    could file rules under a key it does not govern (and its document would hold another tenant's key ids)."""
    await services(request).billing.get_key(key_admin_pb2.GetApiKeyRequest(account_id=account_id, key_id=key_id))


async def _put_scope(request: Request, account_id: str, scope: str, document: str, *, shadow: bool) -> Response:
    kind, _, key_id = scope.partition(":")
    if kind == "key" and key_id:
        try:
            await _key_of_account(request, account_id, key_id)
        except NotFound:
            if not shadow:
                raise
            raise InvalidRequest(f"'scope' names no key of account {account_id}", param="scope",
                                 code="unknown_key") from None
    reply = await services(request).policy.put_scope(account_id, scope, document, shadow=shadow)
    return _json(_version_json(reply))


async def _effective(request: Request, account_id: str, *, team: str = "", key_id: str = "") -> Response:
    reply = await services(request).policy.get_policy(account_id, team=team, key_id=key_id)
    return _policy_json(account_id, reply.policy, reply.effective_json)


@policy_router.put("/accounts/{account_id}/policy")
async def set_policy(account_id: str, request: Request) -> Response:
    body = await _body(request)
    rules = body.get("rules")
    if isinstance(rules, dict) or "rules" not in body:
        return await _put_scope(request, account_id, "account", json.dumps(body, default=str), shadow=False)
    if not isinstance(rules, list):
        raise InvalidRequest("'rules' must be an object {detector: action}", param="rules", code="invalid_type")
    parsed: list[policy_service_pb2.PolicyRule] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise InvalidRequest(f"'rules[{i}]' must be an object", param=f"rules[{i}]", code="invalid_type")
        detector = _str(rule, "detector", required=True)
        action = _ACTIONS.get(str(rule.get("action", "")).lower())
        if action is None:
            raise InvalidRequest(f"'rules[{i}].action' must be one of allow, flag, redact, block",
                                 param=f"rules[{i}].action")
        parsed.append(policy_service_pb2.PolicyRule(detector=detector, action=action))
    return _policy_json(account_id, await services(request).policy.set_rules(account_id, parsed))


@policy_router.get("/accounts/{account_id}/policy")
async def get_policy(account_id: str, request: Request) -> Response:
    return await _effective(request, account_id)


@policy_router.put("/accounts/{account_id}/teams/{team}/policy")
async def set_team_policy(account_id: str, team: str, request: Request) -> Response:
    return await _put_scope(request, account_id, f"team:{team}", await _document(request), shadow=False)


@policy_router.get("/accounts/{account_id}/teams/{team}/policy")
async def get_team_policy(account_id: str, team: str, request: Request) -> Response:
    return await _effective(request, account_id, team=team)


@policy_router.put("/accounts/{account_id}/keys/{key_id}/policy")
async def set_key_policy(account_id: str, key_id: str, request: Request) -> Response:
    return await _put_scope(request, account_id, f"key:{key_id}", await _document(request), shadow=False)


@policy_router.get("/accounts/{account_id}/keys/{key_id}/policy")
async def get_key_policy(account_id: str, key_id: str, request: Request) -> Response:
    """The key's effective policy; ``?team=<name>`` resolves it through the key's team too."""
    return await _effective(request, account_id, team=request.query_params.get("team", ""), key_id=key_id)


@policy_router.post("/accounts/{account_id}/policy/shadow")
async def set_shadow_policy(account_id: str, request: Request) -> Response:
    """Body: {"scope": "account" | "team:<name>" | "key:<id>" (default account), "policy": <scope document>}."""
    body = await _body(request)
    scope = _str(body, "scope", default="account")
    document = body.get("policy", {})
    if not isinstance(document, dict):
        raise InvalidRequest("'policy' must be a policy document object", param="policy", code="invalid_type")
    return await _put_scope(request, account_id, scope, json.dumps(document, default=str), shadow=True)


@policy_router.post("/accounts/{account_id}/policy/shadow/promote")
async def promote_shadow_policy(account_id: str, request: Request) -> Response:
    reply = await services(request).policy.promote_shadow(account_id)
    return _json(_version_json(reply))


@policy_router.post("/accounts/{account_id}/policy/shadow/discard")
async def discard_shadow_policy(account_id: str, request: Request) -> Response:
    reply = await services(request).policy.discard_shadow(account_id)
    return _json(_version_json(reply))


@policy_router.get("/accounts/{account_id}/policy/versions")
async def list_policy_versions(account_id: str, request: Request) -> Response:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
    reply = await services(request).policy.list_versions(account_id, int(raw))
    return _json({"object": "list", "account_id": account_id, "data": [_version_json(v) for v in reply.versions]})


# Included last: include_router copies the routes defined on each sub-router so far.
router.include_router(operator_router)
router.include_router(policy_router)
