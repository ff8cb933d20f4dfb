"""The gRPC transport: protobuf in, application call, protobuf out. Errors are mapped here, once, for every RPC."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import abort
from tollgate_common.logs import request_id_var

from .application import PolicyService
from .domain import Action, Inspection, PolicySet, Verdict
from .errors import PolicyError

__all__ = ["SERVICE_NAME", "PolicyServicer"]

log = logging.getLogger(__name__)

SERVICE_NAME = "tollgate.policy.v1.PolicyService"

_ACTION_FROM_PB: dict[int, Action | None] = {
    pb.ACTION_UNSPECIFIED: None,
    pb.ACTION_ALLOW: Action.ALLOW,
    pb.ACTION_REDACT: Action.REDACT,
    pb.ACTION_BLOCK: Action.BLOCK,
}
_ACTION_TO_PB = {action: number for number, action in _ACTION_FROM_PB.items() if action is not None}
_VERDICT_TO_PB = {Verdict.ALLOW: pb.VERDICT_ALLOW, Verdict.REDACT: pb.VERDICT_REDACT, Verdict.BLOCK: pb.VERDICT_BLOCK}

R = TypeVar("R")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def _mapped(method: Method[R]) -> Method[R]:
    """Turn a :class:`PolicyError` into its gRPC status + ``tollgate-reason``; anything else into INTERNAL.

    An unexpected exception is logged by type and stack only, never its message: that might quote the input.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except PolicyError as exc:
            await abort(context, exc.status, str(exc), reason=exc.reason)
        except Exception as exc:
            log.error(
                "unexpected error",
                extra={
                    "rpc": method.__name__,
                    "error_type": type(exc).__name__,
                    "stack": "".join(traceback.format_tb(exc.__traceback__)),
                },
            )
            await abort(context, grpc.StatusCode.INTERNAL, "internal error", reason="internal")
        raise AssertionError("unreachable: abort raises")

    return wrapper


def _policy_set(policy: PolicySet) -> pb.PolicySet:
    """The effective policy: every detector with its action, the account's own or the default."""
    return pb.PolicySet(
        account_id=policy.account_id,
        rules=[pb.PolicyRule(detector=d, action=_ACTION_TO_PB[a]) for d, a in policy.effective().items()],
        version=policy.version,
    )


def _inspect_response(result: Inspection) -> pb.InspectResponse:
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
            )
            for f in result.findings
        ],
        redacted_texts=result.redacted_texts,
        policy_version=result.policy_version,
    )


class PolicyServicer(pb_grpc.PolicyServiceServicer):  # type: ignore[misc]
    def __init__(self, service: PolicyService) -> None:
        self.service = service

    @_mapped
    async def Inspect(self, request: pb.InspectRequest, context: grpc.aio.ServicerContext) -> pb.InspectResponse:
        request_id_var.set(request.request_id)
        result = await self.service.inspect(request.request_id, request.account_id, request.texts)
        return _inspect_response(result)

    @_mapped
    async def SetPolicy(self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.SetPolicyResponse:
        rules = [(rule.detector, _ACTION_FROM_PB.get(rule.action)) for rule in request.rules]
        policy = await self.service.set_policy(request.account_id, rules)
        return pb.SetPolicyResponse(policy=_policy_set(policy))

    @_mapped
    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        policy = await self.service.get_policy(request.account_id)
        return pb.GetPolicyResponse(policy=_policy_set(policy))
