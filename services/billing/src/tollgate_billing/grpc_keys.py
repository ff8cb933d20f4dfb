"""The tenancy RPCs of BillingService: keys (ListApiKeys, GetApiKey, UpdateApiKey, RevokeApiKey, RotateApiKey) and
teams / projects (CreateGroup, ListGroups, GetGroup, UpdateGroup).

A mixin of :class:`~tollgate_billing.grpc_server.BillingServicer`: protobuf in, :class:`KeyAdmin` call, protobuf
out; errors are mapped by the servicer's ``_mapped`` like every other RPC.
"""

from __future__ import annotations

import grpc
from tollgate.billing.v1 import key_admin_pb2 as kpb
from tollgate.billing.v1 import tenancy_pb2 as tpb
from tollgate.events.v1 import billing_pb2

from .group_admin import GroupAdmin
from .groups import GroupRecord
from .key_admin import KeyAdmin
from .key_lifecycle import KeyRecord

__all__ = ["GroupRpcs", "KeyRpcs", "group_message", "key_message"]

_KINDS = {"team": billing_pb2.GROUP_KIND_TEAM, "project": billing_pb2.GROUP_KIND_PROJECT}


def group_message(group: GroupRecord) -> tpb.Group:
    return tpb.Group(
        account_id=group.account_id, kind=_KINDS[group.kind], group_id=group.group_id, name=group.name,
        created_at_unix_ms=group.created_at_unix_ms, archived_at_unix_ms=group.archived_at_unix_ms or 0,
        updated_at_unix_ms=group.updated_at_unix_ms or 0,
    )


def key_message(key: KeyRecord, now_unix_ms: int) -> kpb.ApiKey:
    """Everything about a key but its secret and hashes."""
    grace = key.grace_until(now_unix_ms)
    return kpb.ApiKey(
        key_id=key.key_id,
        account_id=key.account_id,
        prefix=key.prefix,
        label=key.label,
        has_limit=key.has_limit,
        limit_nanos=key.limit_nanos,
        usage_nanos=key.usage_nanos,
        allowed_models=list(key.allowed_models),
        team=key.team,
        project=key.project,
        rate_limit_rpm=key.rate_limit_rpm,
        account_admin=key.account_admin,
        created_at_unix_ms=key.created_at_unix_ms,
        expires_at_unix_ms=key.expires_at_unix_ms or 0,
        revoked_at_unix_ms=key.revoked_at_unix_ms or 0,
        status=key.status(now_unix_ms),
        previous_prefix=(key.previous_prefix or "") if grace else "",
        previous_valid_until_unix_ms=grace or 0,
        updated_at_unix_ms=key.updated_at_unix_ms or 0,
    )


class KeyRpcs:
    """The methods, borrowed by BillingServicer (which has ``key_admin``) and wrapped in its ``_mapped``."""

    key_admin: KeyAdmin

    async def ListApiKeys(
        self, request: kpb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ListApiKeysResponse:
        keys = await self.key_admin.list_keys(request.account_id, include_revoked=request.include_revoked)
        now = self.key_admin.now_ms()
        return kpb.ListApiKeysResponse(keys=[key_message(k, now) for k in keys])

    async def GetApiKey(self, request: kpb.GetApiKeyRequest, context: grpc.aio.ServicerContext) -> kpb.ApiKey:
        key = await self.key_admin.get_key(request.account_id, request.key_id)
        return key_message(key, self.key_admin.now_ms())

    async def UpdateApiKey(self, request: kpb.UpdateApiKeyRequest, context: grpc.aio.ServicerContext) -> kpb.ApiKey:
        key = await self.key_admin.update_key(
            request.account_id,
            request.key_id,
            label=request.label if request.HasField("label") else None,
            allowed_models=list(request.allowed_models) if request.replace_allowed_models else None,
            expires_at_unix_ms=request.expires_at_unix_ms if request.HasField("expires_at_unix_ms") else None,
            team=request.team if request.HasField("team") else None,
            project=request.project if request.HasField("project") else None,
        )
        return key_message(key, self.key_admin.now_ms())

    async def RevokeApiKey(self, request: kpb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext) -> kpb.ApiKey:
        key = await self.key_admin.revoke_key(request.account_id, request.key_id)
        return key_message(key, self.key_admin.now_ms())

    async def RotateApiKey(
        self, request: kpb.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.RotateApiKeyResponse:
        rotated = await self.key_admin.rotate_key(request.account_id, request.key_id, request.grace_seconds)
        return kpb.RotateApiKeyResponse(key=key_message(rotated.key, self.key_admin.now_ms()), api_key=rotated.api_key)


class GroupRpcs:
    """Borrowed by BillingServicer (which has ``group_admin``), like :class:`KeyRpcs`."""

    group_admin: GroupAdmin

    async def CreateGroup(self, request: tpb.CreateGroupRequest, context: grpc.aio.ServicerContext) -> tpb.Group:
        group, _created = await self.group_admin.create_group(request.account_id, request.kind, request.name,
                                                              request.group_id)
        return group_message(group)

    async def ListGroups(
        self, request: tpb.ListGroupsRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ListGroupsResponse:
        groups = await self.group_admin.list_groups(request.account_id, request.kind,
                                                    include_archived=request.include_archived)
        return tpb.ListGroupsResponse(groups=[group_message(g) for g in groups])

    async def GetGroup(self, request: tpb.GetGroupRequest, context: grpc.aio.ServicerContext) -> tpb.Group:
        return group_message(await self.group_admin.get_group(request.account_id, request.kind, request.group_id))

    async def UpdateGroup(self, request: tpb.UpdateGroupRequest, context: grpc.aio.ServicerContext) -> tpb.Group:
        group = await self.group_admin.update_group(
            request.account_id, request.kind, request.group_id,
            name=request.name if request.HasField("name") else None,
            archived=request.archived if request.HasField("archived") else None,
        )
        return group_message(group)
