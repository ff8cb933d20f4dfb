"""Ingress's typed client of policy (DLP): inspections of prompts and answers, and the policy admin API's calls.

:meth:`PolicyClient.inspect` answers an :class:`Inspection`; a verdict ingress does not know is refused here, once,
as a 503 (fail closed: text policy has not judged must not leave). With ``local`` (INGRESS_POLICY_IN_PROCESS, the
default) it decides in this process when :mod:`.policy_state` holds the account's current policy, and asks
policy's ``Inspect`` otherwise (first the watch must be open; policy away: 503 from that call).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate.policy.v1 import policy_service_pb2_grpc

from .channels import CallMetadata, UnaryCaller
from .errors import ServiceUnavailable
from .metrics import Metrics

if TYPE_CHECKING:
    from .local_policy import LocalPolicy
    from .policy_state import PolicyStates

__all__ = ["Action", "Finding", "Inspection", "PolicyClient", "RoutingConstraints", "Verdict"]


class Verdict(enum.Enum):
    ALLOW = "allow"
    FLAG = "flag"
    REDACT = "redact"
    BLOCK = "block"


class Action(enum.Enum):
    """What the policy does with one finding."""

    UNSPECIFIED = "unspecified"
    ALLOW = "allow"
    FLAG = "flag"
    REDACT = "redact"
    BLOCK = "block"


_VERDICTS = {
    ppb.VERDICT_ALLOW: Verdict.ALLOW,
    ppb.VERDICT_FLAG: Verdict.FLAG,
    ppb.VERDICT_REDACT: Verdict.REDACT,
    ppb.VERDICT_BLOCK: Verdict.BLOCK,
}
_ACTIONS = {
    ppb.ACTION_ALLOW: Action.ALLOW,
    ppb.ACTION_FLAG: Action.FLAG,
    ppb.ACTION_REDACT: Action.REDACT,
    ppb.ACTION_BLOCK: Action.BLOCK,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One detector match: its type and where (character offsets into the inspected text), never the data."""

    type: str
    start: int
    end: int
    action: Action


@dataclass(frozen=True, slots=True)
class RoutingConstraints:
    """Where the policy lets a request go; passed on to the router as they are."""

    allowed_providers: tuple[str, ...] = ()
    denied_providers: tuple[str, ...] = ()
    allowed_regions: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Inspection:
    verdict: Verdict
    #: The routing rule that blocked the request ("model_not_allowed"…), "" for a data finding.
    rule: str = ""
    findings: tuple[Finding, ...] = ()
    #: For REDACT: each inspected text redacted, in the order sent.
    redacted_texts: tuple[str, ...] = ()
    #: The policy wants the answer inspected before the caller sees it.
    scan_responses: bool = False
    constraints: RoutingConstraints = RoutingConstraints()

    def blocked_kinds(self) -> list[str]:
        """The finding types behind a block (those whose action is BLOCK, else all), each once."""
        kinds = [f.type for f in self.findings if f.action is Action.BLOCK] or [f.type for f in self.findings]
        return list(dict.fromkeys(k for k in kinds if k))


def _constraints(pb: ppb.RoutingConstraints) -> RoutingConstraints:
    if not (pb.allowed_providers or pb.denied_providers or pb.allowed_regions or pb.allowed_models):
        return _NO_CONSTRAINTS
    return RoutingConstraints(
        tuple(pb.allowed_providers), tuple(pb.denied_providers), tuple(pb.allowed_regions), tuple(pb.allowed_models)
    )


_NO_CONSTRAINTS = RoutingConstraints()


class PolicyClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: CallMetadata, timeout: float, metrics: Metrics) -> None:
        self._stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._call = UnaryCaller("policy", metadata, timeout)
        self._inspect_seconds = metrics.upstream_seconds.labels("policy", "Inspect")
        #: Set by Services.build when ingress decides in process: the held policies and the local decider.
        self.states: PolicyStates | None = None
        self.local: LocalPolicy | None = None

    async def inspect(
        self,
        request_id: str,
        account_id: str,
        key_id: str,
        *,
        team: str = "",
        model: str = "",
        texts: Sequence[str] = (),
        response: bool = False,
        sequence: int = 0,
    ) -> Inspection:
        """Policy's verdict on ``texts`` (a prompt's, or with ``response`` a window of the answer), and the routing
        constraints for the key. Without texts and model: only the constraints (what ``/v1/models`` lists)."""
        if self.states is not None and self.local is not None:
            state = await self.states.get(account_id)
            if state is not None:
                return await self.local.inspect(
                    state, request_id, key_id, team=team, model=model, texts=texts, response=response,
                    sequence=sequence,
                )
        started = time.perf_counter()
        try:
            reply = await self._call(
                self._stub.Inspect,
                ppb.InspectRequest(
                    request_id=request_id,
                    account_id=account_id,
                    key_id=key_id,
                    team=team,
                    model=model,
                    texts=texts,
                    direction=ppb.DIRECTION_RESPONSE if response else ppb.DIRECTION_REQUEST,
                    sequence=sequence,
                ),
            )
        finally:
            self._inspect_seconds.observe(time.perf_counter() - started)
        verdict = _VERDICTS.get(reply.verdict)
        if verdict is None and (texts or model):
            raise ServiceUnavailable("policy returned no verdict", code="policy_error")
        return Inspection(
            verdict=verdict or Verdict.ALLOW,
            rule=reply.rule,
            findings=tuple(
                Finding(f.type, f.start, f.end, _ACTIONS.get(f.action, Action.UNSPECIFIED)) for f in reply.findings
            ),
            redacted_texts=tuple(reply.redacted_texts),
            scan_responses=reply.scan_responses,
            constraints=_constraints(reply.constraints),
        )

    # --- the policy admin API -----------------------------------------------------------------------------------
    # Each change also drops the account's held state (policy_state.py): the next request here re-reads it.
    def _changed(self, account_id: str) -> None:
        if self.states is not None:
            self.states.forget(account_id)

    async def set_rules(self, account_id: str, rules: list[ppb.PolicyRule]) -> ppb.PolicySet:
        reply = await self._call(self._stub.SetPolicy, ppb.SetPolicyRequest(account_id=account_id, rules=rules))
        self._changed(account_id)
        return reply.policy

    async def get_policy(self, account_id: str, *, team: str = "", key_id: str = "") -> ppb.GetPolicyResponse:
        return await self._call(
            self._stub.GetPolicy, ppb.GetPolicyRequest(account_id=account_id, team=team, key_id=key_id)
        )

    async def put_scope(self, account_id: str, scope: str, document_json: str, *, shadow: bool) -> ppb.PolicyVersion:
        reply = await self._call(
            self._stub.PutScopePolicy,
            ppb.PutScopePolicyRequest(account_id=account_id, scope=scope, document_json=document_json, shadow=shadow),
        )
        self._changed(account_id)
        return reply

    async def promote_shadow(self, account_id: str) -> ppb.PolicyVersion:
        reply = await self._call(self._stub.PromoteShadow, ppb.ShadowRequest(account_id=account_id))
        self._changed(account_id)
        return reply

    async def discard_shadow(self, account_id: str) -> ppb.PolicyVersion:
        reply = await self._call(self._stub.DiscardShadow, ppb.ShadowRequest(account_id=account_id))
        self._changed(account_id)
        return reply

    async def list_versions(self, account_id: str, limit: int) -> ppb.ListPolicyVersionsResponse:
        return await self._call(
            self._stub.ListPolicyVersions, ppb.ListPolicyVersionsRequest(account_id=account_id, limit=limit)
        )
