"""The gRPC transport: protobuf in, application call, protobuf out. Errors are mapped here, once, for every RPC."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import grpc
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import StatusTable, rpc
from tollgate_common.internal_auth import InternalAuth, guard_servicer
from tollgate_common.logs import request_id_var
from tollgate_dlp.document import Action, PolicySet
from tollgate_dlp.errors import (
    ConcurrentUpdate,
    InvalidArgument,
    NoShadowPolicy,
    PolicyError,
    ScanCapacityExhausted,
    StorageUnavailable,
)
from tollgate_dlp.inspection import Inspection, Verdict
from tollgate_dlp.state import PolicyState
from tollgate_dlp.wire import state_to_update

from .application import PolicyService
from .repository import StoredVersion

__all__ = ["CALLERS", "SERVICE_NAME", "STATUSES", "PolicyServicer"]

log = logging.getLogger(__name__)

SERVICE_NAME = "tollgate.policy.v1.PolicyService"

_ACTION_FROM_PB: dict[int, Action | None] = {
    pb.ACTION_UNSPECIFIED: None,
    pb.ACTION_ALLOW: Action.ALLOW,
    pb.ACTION_REDACT: Action.REDACT,
    pb.ACTION_BLOCK: Action.BLOCK,
    pb.ACTION_FLAG: Action.FLAG,
}
_ACTION_TO_PB = {action: number for number, action in _ACTION_FROM_PB.items() if action is not None}
_VERDICT_TO_PB = {
    Verdict.ALLOW: pb.VERDICT_ALLOW,
    Verdict.FLAG: pb.VERDICT_FLAG,
    Verdict.REDACT: pb.VERDICT_REDACT,
    Verdict.BLOCK: pb.VERDICT_BLOCK,
}
_DIRECTION_FROM_PB = {
    pb.DIRECTION_UNSPECIFIED: "request",
    pb.DIRECTION_REQUEST: "request",
    pb.DIRECTION_RESPONSE: "response",
}

#: Policy's errors → gRPC status codes, once (a subclass takes its nearest listed base).
STATUSES = StatusTable({
    PolicyError: grpc.StatusCode.INTERNAL,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NoShadowPolicy: grpc.StatusCode.NOT_FOUND,
    ConcurrentUpdate: grpc.StatusCode.ABORTED,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    ScanCapacityExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
})
#: Anything unexpected is INTERNAL and logged by type and stack only, never its message: that might quote the input.
_mapped = rpc(STATUSES, hide_unexpected=True)

#: Who may call what (see tollgate_common.internal_auth): the request path and the admin API, both ingress's.
CALLERS: dict[str, frozenset[str]] = {
    name: frozenset({"ingress"})
    for name in (
        "Inspect",
        "SetPolicy",
        "GetPolicy",
        "PutScopePolicy",
        "ListPolicyVersions",
        "PromoteShadow",
        "DiscardShadow",
        "GetPolicyState",
        "WatchPolicies",
    )
}


def _policy_set(policy: PolicySet, team: str = "", key_id: str = "") -> pb.PolicySet:
    """The effective rules for (team, key): every detector with its action and where that comes from."""
    resolved = policy.resolve(team, key_id)
    return pb.PolicySet(
        account_id=policy.account_id,
        rules=[
            pb.PolicyRule(detector=d, action=_ACTION_TO_PB[a], source=resolved.sources[d])
            for d, a in resolved.actions.items()
        ],
        version=policy.version,
    )


def _effective_json(state: PolicyState, team: str, key_id: str) -> str:
    policy = state.enforced
    resolved = policy.resolve(team, key_id)
    return json.dumps(
        {
            "scope": resolved.scope,
            "version": policy.version,
            "rules": {d: {"action": a.value, "source": resolved.sources[d]} for d, a in resolved.actions.items()},
            "routing": resolved.routing.to_json(),
            "when_found": [c.to_json() for c in resolved.when_found],
            "scan_responses": resolved.scan_responses,
            "document": policy.to_json(),
            "shadow_version": None if state.shadow is None else state.shadow.version,
        }
    )


def _version(stored: StoredVersion) -> pb.PolicyVersion:
    return pb.PolicyVersion(
        account_id=stored.policy.account_id,
        version=stored.policy.version,
        kind=stored.kind,
        document_json=json.dumps(stored.policy.to_json()),
        created_at_unix_ms=stored.created_at_unix_ms,
    )


def _inspect_response(result: Inspection, direction: str) -> pb.InspectResponse:
    """``scan_responses`` is only said on a request's answer (a response window needs no further scan)."""
    routing = result.routing
    return pb.InspectResponse(
        verdict=_VERDICT_TO_PB[result.verdict],
        findings=[
            pb.Finding(
                type=f.type,
                text_index=f.text_index,
                start=f.start,
                end=f.end,
                detector_version=f.detector_version,
                action=_ACTION_TO_PB[f.action],
                confidence=f.confidence,
            )
            for f in result.findings
        ],
        redacted_texts=result.redacted_texts,
        policy_version=result.policy_version,
        constraints=pb.RoutingConstraints(
            allowed_providers=routing.allowed_providers,
            denied_providers=routing.denied_providers,
            allowed_regions=routing.allowed_regions,
            allowed_models=routing.allowed_models,
        ),
        policy_scope=result.scope,
        rule=result.rule,
        scan_responses=result.scan_responses and direction == "request",
    )


@guard_servicer(CALLERS, pb_grpc.PolicyServiceServicer)
class PolicyServicer(pb_grpc.PolicyServiceServicer):  # type: ignore[misc]
    def __init__(self, service: PolicyService, internal_auth: InternalAuth) -> None:
        self.service = service
        self.internal_auth = internal_auth

    @_mapped
    async def Inspect(self, request: pb.InspectRequest, context: grpc.aio.ServicerContext) -> pb.InspectResponse:
        request_id_var.set(request.request_id)
        direction = _DIRECTION_FROM_PB.get(request.direction, "request")
        result = await self.service.inspect(
            request.request_id,
            request.account_id,
            request.texts,
            key_id=request.key_id,
            team=request.team,
            model=request.model,
            direction=direction,
            sequence=request.sequence,
        )
        return _inspect_response(result, direction)

    @_mapped
    async def SetPolicy(self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.SetPolicyResponse:
        rules = [(rule.detector, _ACTION_FROM_PB.get(rule.action)) for rule in request.rules]
        policy = await self.service.set_policy(request.account_id, rules)
        return pb.SetPolicyResponse(policy=_policy_set(policy))

    @_mapped
    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        state = await self.service.get_state(request.account_id)
        return pb.GetPolicyResponse(
            policy=_policy_set(state.enforced, request.team, request.key_id),
            effective_json=_effective_json(state, request.team, request.key_id),
        )

    @_mapped
    async def PutScopePolicy(
        self, request: pb.PutScopePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PolicyVersion:
        stored = await self.service.put_scope(
            request.account_id, request.scope, request.document_json, shadow=request.shadow
        )
        return _version(stored)

    @_mapped
    async def ListPolicyVersions(
        self, request: pb.ListPolicyVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPolicyVersionsResponse:
        versions = await self.service.versions(request.account_id, request.limit)
        return pb.ListPolicyVersionsResponse(versions=[_version(v) for v in versions])

    @_mapped
    async def PromoteShadow(self, request: pb.ShadowRequest, context: grpc.aio.ServicerContext) -> pb.PolicyVersion:
        return _version(await self.service.promote_shadow(request.account_id))

    @_mapped
    async def DiscardShadow(self, request: pb.ShadowRequest, context: grpc.aio.ServicerContext) -> pb.PolicyVersion:
        return _version(await self.service.discard_shadow(request.account_id))

    @_mapped
    async def GetPolicyState(
        self, request: pb.GetPolicyStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.PolicyStateUpdate:
        return state_to_update(await self.service.current_state(request.account_id))

    @_mapped
    async def WatchPolicies(
        self, request: pb.WatchPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PolicyStateUpdate]:
        """Every change this replica commits, and heartbeats (see watch.py), until the caller hangs up."""
        changes = self.service.changes
        heartbeat = pb.PolicyStateUpdate(heartbeat=True, heartbeat_interval_ms=int(changes.heartbeat_seconds * 1000))
        async for state in changes.watch():
            yield heartbeat if state is None else state_to_update(state)
