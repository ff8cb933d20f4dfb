"""The admin API's teams and projects: ``/admin/v1/accounts/{account_id}/teams`` and ``…/projects``.

Create (``{"id"?, "name"}``; with an id the call is idempotent, the same id with another name is 409), list
(``?include_archived=true``), get, and ``PATCH`` (``{"name"?, "archived"?}``: rename, archive, restore). A key names
its team and project by id (``"team": "research"`` on the key routes); an archived group takes no new keys (409
``group_archived``) and keeps its keys working. Who may call: the operator or an ``account_admin`` key of the
account, as for keys (key_routes.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from tollgate.billing.v1 import tenancy_pb2
from tollgate.events.v1 import billing_pb2

from .admin_routes import _body, _json, _str, require_account_admin
from .deps import services
from .errors import InvalidRequest

__all__ = ["router"]

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_account_admin)])

_KINDS = {"teams": billing_pb2.GROUP_KIND_TEAM, "projects": billing_pb2.GROUP_KIND_PROJECT}
_OBJECT = {billing_pb2.GROUP_KIND_TEAM: "team", billing_pb2.GROUP_KIND_PROJECT: "project"}


def _kind(kinds: str) -> int:
    return _KINDS[kinds]


def group_json(group: tenancy_pb2.Group) -> dict[str, Any]:
    return {
        "object": _OBJECT.get(group.kind, "group"),
        "id": group.group_id,
        "account_id": group.account_id,
        "name": group.name,
        "archived": bool(group.archived_at_unix_ms),
        "created_at": group.created_at_unix_ms // 1000,
        "archived_at": group.archived_at_unix_ms // 1000 if group.archived_at_unix_ms else None,
        "updated_at": group.updated_at_unix_ms // 1000 if group.updated_at_unix_ms else None,
    }


def _routes(kinds: str) -> None:
    kind = _kind(kinds)

    async def create(account_id: str, request: Request) -> Response:
        body = await _body(request)
        reply = await services(request).billing.create_group(tenancy_pb2.CreateGroupRequest(
            account_id=account_id, kind=kind, group_id=_str(body, "id"), name=_str(body, "name", required=True)))
        return _json(group_json(reply), 201)

    async def list_(account_id: str, request: Request) -> Response:
        raw = request.query_params.get("include_archived", "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise InvalidRequest("'include_archived' must be true or false", param="include_archived")
        reply = await services(request).billing.list_groups(tenancy_pb2.ListGroupsRequest(
            account_id=account_id, kind=kind, include_archived=raw in ("true", "1")))
        return _json({"object": "list", "account_id": account_id, "data": [group_json(g) for g in reply.groups]})

    async def get(account_id: str, group_id: str, request: Request) -> Response:
        reply = await services(request).billing.get_group(tenancy_pb2.GetGroupRequest(
            account_id=account_id, kind=kind, group_id=group_id))
        return _json(group_json(reply))

    async def update(account_id: str, group_id: str, request: Request) -> Response:
        body = await _body(request)
        unknown = sorted(set(body) - {"name", "archived"})
        if unknown:
            raise InvalidRequest(f"'{unknown[0]}' cannot be changed (name and archived can)", param=unknown[0],
                                 code="unknown_parameter")
        message = tenancy_pb2.UpdateGroupRequest(account_id=account_id, kind=kind, group_id=group_id)
        if "name" in body:
            message.name = _str(body, "name", required=True)
        if "archived" in body:
            if not isinstance(body["archived"], bool):
                raise InvalidRequest("'archived' must be a boolean", param="archived", code="invalid_type")
            message.archived = body["archived"]
        return _json(group_json(await services(request).billing.update_group(message)))

    base = f"/accounts/{{account_id}}/{kinds}"
    router.add_api_route(base, create, methods=["POST"], name=f"create_{kinds}")
    router.add_api_route(base, list_, methods=["GET"], name=f"list_{kinds}")
    router.add_api_route(base + "/{group_id}", get, methods=["GET"], name=f"get_{kinds}")
    router.add_api_route(base + "/{group_id}", update, methods=["PATCH"], name=f"update_{kinds}")


_routes("teams")
_routes("projects")
