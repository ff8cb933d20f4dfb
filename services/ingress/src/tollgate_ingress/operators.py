"""Who is calling the admin API, and may they: named operator tokens with roles, and the gates routes depend on.

Credentials (read once at start, see config.py):

* ``INGRESS_ADMIN_TOKEN`` is the operator named ``admin-token`` with role ``owner`` (as before: it may do
  everything).
* ``INGRESS_OPERATORS`` names more operators, as JSON
  ``[{"name": "alice", "role": "billing", "token_sha256": "<64 hex>"}, ...]``. Only the SHA-256 of each token is
  configured (``printf %s "$TOKEN" | sha256sum``), so the configuration at rest (a Kubernetes secret, a file) does
  not hold a usable credential. Tokens are random secrets of at least 32 characters, like API keys, so one fast hash
  is enough: nobody guesses a preimage.

Roles (what a route needs is its *area* and whether it writes; reads are GET and HEAD):

======== ==============================================================================================
owner     everything
billing   reads everything; writes accounts, credits, budgets, keys, teams and projects (area ``billing``)
policy    reads everything; writes DLP policy (area ``policy``)
read-only reads everything (usage, statements, ledger, balances, keys without secrets, policy); writes nothing
======== ==============================================================================================

A named operator whose role does not cover the route is 403 ``insufficient_role``. An API key that is an account
admin (issue 13's account admin keys) still manages its own account on the routes gated by
:func:`account_admin_gate`; it is never an operator.

The gate leaves who called on ``request.state.operator`` (an :class:`Operator`), which the audit trail
(tollgate_ingress.operator_audit) records for every admin action, and which routes read when an action is for
operators only (:func:`operator_of`).

Other route modules use the gates too::

    router = APIRouter(prefix="/admin/v1", dependencies=[Depends(account_admin_gate(Area.BILLING))])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from fastapi import Request

from .errors import AuthenticationFailed, PermissionDenied

__all__ = [
    "ADMIN_TOKEN_OPERATOR",
    "Area",
    "Operator",
    "OperatorBook",
    "Role",
    "account_admin_gate",
    "admin_credential",
    "operator_gate",
    "operator_of",
    "parse_operators",
]

ADMIN_TOKEN_OPERATOR = "admin-token"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_READS = frozenset({"GET", "HEAD"})


class Role(StrEnum):
    OWNER = "owner"
    BILLING = "billing"
    POLICY = "policy"
    READ_ONLY = "read-only"
    #: Not configurable: an API key that is an admin of one account (the path's).
    ACCOUNT_ADMIN = "account-admin"


class Area(StrEnum):
    """What a route changes, which decides the role a write needs."""

    BILLING = "billing"
    POLICY = "policy"
    #: Operator-wide things only an owner changes (e.g. operator tokens, if they ever move to the API).
    OWNER = "owner"


_WRITERS: dict[Area, frozenset[Role]] = {
    Area.BILLING: frozenset({Role.OWNER, Role.BILLING}),
    Area.POLICY: frozenset({Role.OWNER, Role.POLICY}),
    Area.OWNER: frozenset({Role.OWNER}),
}


@dataclass(frozen=True, slots=True)
class Operator:
    """Who made an admin call: an operator's name (never its token) or ``key:<key_id>`` for an account admin key."""

    name: str
    role: Role
    #: For an account admin key: the one account it manages.
    account_id: str = ""

    def may(self, area: Area, method: str) -> bool:
        if method.upper() in _READS:
            return True
        return self.role in _WRITERS[area]


def parse_operators(text: str) -> dict[str, Operator]:
    """``INGRESS_OPERATORS`` → {token sha256 hex: operator}; ValueError (with no secret in it) when malformed."""
    if not text.strip():
        return {}
    try:
        entries = json.loads(text)
    except ValueError:
        raise ValueError("is not valid JSON (a list of {name, role, token_sha256})") from None
    if not isinstance(entries, list):
        raise ValueError("must be a JSON list of {name, role, token_sha256}")
    book: dict[str, Operator] = {}
    names: set[str] = set()
    roles = {r.value for r in Role if r is not Role.ACCOUNT_ADMIN}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"name", "role", "token_sha256"}:
            raise ValueError(f"entry {i} must have exactly the fields name, role, token_sha256")
        name, role, digest = entry["name"], entry["role"], entry["token_sha256"]
        if not isinstance(name, str) or not _NAME.match(name) or name == ADMIN_TOKEN_OPERATOR:
            raise ValueError(f"entry {i}: name must match {_NAME.pattern} and not be {ADMIN_TOKEN_OPERATOR!r}")
        if role not in roles:
            raise ValueError(f"entry {i} ({name}): role must be one of {', '.join(sorted(roles))}")
        if not isinstance(digest, str) or not _SHA256_HEX.match(digest.lower()):
            raise ValueError(f"entry {i} ({name}): token_sha256 must be 64 hex digits (the SHA-256 of the token)")
        if name in names or digest.lower() in book:
            raise ValueError(f"entry {i} ({name}): names and tokens must be unique")
        names.add(name)
        book[digest.lower()] = Operator(name, Role(role))
    return book


class OperatorBook:
    """Token → operator. The admin token is compared in constant time; named tokens are found by their hash."""

    def __init__(self, admin_token: str, named: Mapping[str, Operator]) -> None:
        self._admin_token = admin_token.encode()
        self._named = dict(named)

    def find(self, token: str) -> Operator | None:
        if hmac.compare_digest(token.encode(), self._admin_token):
            return Operator(ADMIN_TOKEN_OPERATOR, Role.OWNER)
        return self._named.get(hashlib.sha256(token.encode()).hexdigest())


def admin_credential(request: Request) -> str:
    from .openai_routes import bearer_token  # the shape check the public API uses

    try:
        return bearer_token(request)
    except AuthenticationFailed:
        raise AuthenticationFailed("The admin API needs 'Authorization: Bearer <admin token or API key>'.",
                                   code="invalid_admin_token") from None


def operator_of(request: Request) -> Operator | None:
    """The caller the gate let in (None before a gate ran)."""
    found = getattr(request.state, "operator", None)
    return found if isinstance(found, Operator) else None


def _book(request: Request) -> OperatorBook:
    from .deps import services

    return services(request).operators


def _insufficient(operator: Operator, area: Area) -> PermissionDenied:
    return PermissionDenied(f"Operator role '{operator.role}' may not change {area} settings.",
                            code="insufficient_role")


Gate = Callable[..., Awaitable[None]]


def operator_gate(area: Area) -> Gate:
    """Operators only (no API key is ever looked up): 401 ``invalid_admin_token`` for an unknown token (counted
    against the peer, which gets 429 after too many), 403 ``insufficient_role`` for a role that may not."""

    async def require_operator(request: Request) -> None:
        from .deps import services
        from .openai_routes import peer

        token = admin_credential(request)
        throttle = services(request).gate.throttle
        throttle.check(peer(request))
        operator = _book(request).find(token)
        if operator is None:
            throttle.failed(peer(request))
            raise AuthenticationFailed("Invalid admin token.", code="invalid_admin_token")
        request.state.operator = operator
        if not operator.may(area, request.method):
            raise _insufficient(operator, area)

    return require_operator


def account_admin_gate(area: Area) -> Gate:
    """Routes with ``{account_id}``: an operator whose role covers ``area`` (reads: any role), or an API key that
    billing says is an admin of the path's account (a revoked or expired key is refused by billing: 401). Wrong keys
    count against the peer like any other."""

    async def require_account_admin(account_id: str, request: Request) -> None:
        from .deps import services
        from .openai_routes import checked_key

        token = admin_credential(request)
        operator = _book(request).find(token)
        if operator is not None:
            request.state.operator = operator
            if not operator.may(area, request.method):
                raise _insufficient(operator, area)
            return
        await checked_key(request, token)
        info = await services(request).keys.key_info(token)  # unknown key: billing's UNAUTHENTICATED, a 401
        if not (info.account_admin and info.account_id == account_id):
            raise PermissionDenied("This API key may not manage this account.", code="permission_denied")
        request.state.operator = Operator(f"key:{info.key_id}", Role.ACCOUNT_ADMIN, account_id=account_id)

    return require_account_admin
