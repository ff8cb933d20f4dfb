"""A chat completion, between the HTTP layer and the services.

Count prompt tokens → billing authorizes (a hold for the maximum cost) → policy inspects (allow, flag, redact,
block; the routing constraints it sets) → the router completes or streams (:mod:`tollgate_ingress.streaming`) →
when the policy asks for it, policy inspects the answer (:mod:`tollgate_ingress.response_scan`) → exactly one
``UsageRecorded`` closes the hold (:mod:`tollgate_ingress.settlement`). An answer the policy blocks was still
served upstream, so it is billed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .admission import ConcurrencyLimits, KeyGate, Slot
from .billing_client import BillingClient
from .catalogue import ModelDirectory
from .domain import ChatRequest, Outcome, Usage
from .errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamTimeout,
    policy_violation,
)
from .metrics import Metrics
from .policy_client import Inspection, PolicyClient, RoutingConstraints, Verdict
from .publisher import UsagePublisher
from .response_scan import ResponseBlocked, scan_completion
from .router_client import RouterClient, RouteRequest
from .settlement import Settlement
from .streaming import StreamFailed, StreamItem, StreamPump, StreamSession
from .tokens import PromptTokenCounter
from .unknown_holds import UnknownHolds

__all__ = ["ChatCompletions", "Prepared"]


@dataclass(slots=True)
class Prepared:
    """An authorized, inspected request: what goes to the router, and the hold it must close."""

    request: ChatRequest
    request_id: str
    body_json: bytes
    settlement: Settlement
    #: The tokenizer's count of the prompt (what the hold was sized on); billed when a stream breaks mid-way.
    prompt_tokens: int = 0
    #: Where the policy lets the request go (model/provider/region allow-lists), passed on to the router.
    constraints: RoutingConstraints = field(default_factory=RoutingConstraints)
    #: The policy wants the answer inspected before the caller sees it.
    scan_responses: bool = False
    #: The catalogue models billing checked and held for: the router may serve no other.
    authorized_models: list[str] = field(default_factory=list)
    #: The usage billed for a non-streamed answer, once :meth:`ChatCompletions.complete` has it (the other wire
    #: formats report it in their own shape).
    usage: Usage | None = None
    #: The key's place among its concurrent requests, given back when the answer (or the stream's task) ends.
    slot: Slot | None = None

    def release(self) -> None:
        """Give the key's concurrency place back: when the answer is complete (or the stream's task ended)."""
        if self.slot is not None:
            self.slot.release()

    def route(self) -> RouteRequest:
        auth = self.settlement.auth
        return RouteRequest(
            request_id=self.request_id,
            account_id=auth.account_id,
            key_id=auth.key_id,
            model=self.request.model,
            body_json=self.body_json,
            constraints=self.constraints,
            authorized_models=self.authorized_models,
            prompt_tokens_estimate=self.prompt_tokens,
        )


#: What a routing rule means, for the 403's message (the rule's name is always given too).
_RULE_MESSAGES = {
    "model_not_allowed": "the model is not on the allowed list",
    # The team's and the key's allow-lists exclude each other: nothing is left to route to.
    "provider_not_allowed": "the provider limits that apply leave no allowed provider",
    "region_not_allowed": "the region limits that apply leave no allowed region",
}


class ChatCompletions:
    def __init__(
        self,
        billing: BillingClient,
        policy: PolicyClient,
        router: RouterClient,
        publisher: UsagePublisher,
        counter: PromptTokenCounter,
        metrics: Metrics,
        gate: KeyGate,
        limits: ConcurrencyLimits,
        directory: ModelDirectory | None = None,
    ) -> None:
        self.billing = billing
        self.policy = policy
        self.router = router
        self.directory = directory or ModelDirectory(router)
        self.publisher = publisher
        self.counter = counter
        self.gate = gate
        self.limits = limits
        self.pump = StreamPump(router, counter, metrics)
        self.unknown_holds = UnknownHolds(billing, publisher)

    # --- before the router --------------------------------------------------------------------------------------
    async def prepare(self, api_key: str, request_id: str, request: ChatRequest, peer: str = "") -> Prepared:
        """Take a place among the key's concurrent requests (429 when none is left), authorize (place the hold)
        and apply the DLP verdict. After the hold is placed, every way out of here closes it; every way out but
        the returned :class:`Prepared` gives the place back."""
        slot = self.limits.acquire(api_key, stream=request.stream)
        try:
            prepared = await self._prepare(api_key, request_id, request, peer)
        except BaseException:
            slot.release()
            raise
        prepared.slot = slot
        return prepared

    async def _prepare(self, api_key: str, request_id: str, request: ChatRequest, peer: str) -> Prepared:
        prompt_tokens = await self.counter.count(request.messages, request.prompt_extras, len(request.raw))
        candidates = await self.directory.resolve(request.candidate_models)
        try:
            auth = await self.billing.authorize(
                api_key, request_id, candidates, prompt_tokens, request.held_output_tokens
            )
        except (UpstreamTimeout, ServiceUnavailable, asyncio.CancelledError):
            # Billing may have placed the hold without ingress hearing of it: close it, whatever happened.
            self.unknown_holds.close_later(api_key, request_id, request, candidates)
            raise
        except AuthenticationFailed:
            self.gate.refused(api_key, peer)  # revoked or expired since the gate last asked
            raise
        except InvalidRequest as exc:
            missing = self.directory.unknown(candidates) if exc.code == "model_not_priced" else None
            if missing is not None:  # not unpriced: it does not exist (OpenAI's answer for an unknown model)
                raise NotFound(f"The model '{missing}' does not exist or is not served by this gateway.",
                               code="model_not_found", param="model") from None
            if exc.code == "model_not_priced":
                exc.param = exc.param or "model"
            raise
        settlement = Settlement(self.publisher, request, request_id, auth)
        try:
            redacted, inspection = await self._inspect(request_id, request, settlement)
            body = request.forwarded_body(redacted, auth.hold_output_tokens)
        except BaseException:
            settlement.close(Outcome.FAILED)  # no-op when the block already closed it
            raise
        return Prepared(
            request=request,
            request_id=request_id,
            body_json=body,
            settlement=settlement,
            prompt_tokens=prompt_tokens,
            constraints=inspection.constraints,
            scan_responses=inspection.scan_responses,
            authorized_models=candidates,
        )

    async def _inspect(
        self, request_id: str, request: ChatRequest, settlement: Settlement
    ) -> tuple[tuple[str, ...] | None, Inspection]:
        """The redacted texts (message texts, then tool texts; None: forward them as sent) and policy's answer.
        Always asked, even without text: the policy also decides which models and providers the request may use."""
        auth = settlement.auth
        inspection = await self.policy.inspect(
            request_id, auth.account_id, auth.key_id, team=auth.team, model=request.model,
            texts=request.scanned_texts(),
        )
        if inspection.verdict is Verdict.ALLOW or inspection.verdict is Verdict.FLAG:
            return None, inspection
        if inspection.verdict is Verdict.BLOCK:
            settlement.close(Outcome.BLOCKED)
            if inspection.rule:
                raise PermissionDenied(
                    f"The request was blocked by the account's policy (rule {inspection.rule}): "
                    + _RULE_MESSAGES.get(inspection.rule, "the policy does not allow this request"),
                    code="policy_violation",
                )
            raise policy_violation("request", inspection.blocked_kinds())
        if len(inspection.redacted_texts) != request.scanned_count:
            raise ServiceUnavailable("policy returned a redaction that does not match the prompt", code="policy_error")
        return inspection.redacted_texts, inspection

    def _response_inspector(self, prepared: Prepared) -> Callable[[list[str], int], Awaitable[Inspection]]:
        """Inspects the model's answer under the same context as the prompt (direction RESPONSE)."""
        auth = prepared.settlement.auth

        async def inspect(texts: list[str], sequence: int) -> Inspection:
            return await self.policy.inspect(
                prepared.request_id, auth.account_id, auth.key_id, team=auth.team, model=prepared.request.model,
                texts=texts, response=True, sequence=sequence,
            )

        return inspect

    # --- the router -------------------------------------------------------------------------------------------
    async def complete(self, prepared: Prepared) -> bytes:
        """Non-streaming: the upstream's OpenAI body, as it came (or redacted by the policy)."""
        settlement = prepared.settlement
        try:
            completion = await self.router.complete(prepared.route())
        except BaseException as exc:
            settlement.close_failed(exc, prepared.prompt_tokens)
            raise
        finally:
            prepared.release()
        served = completion.served
        prepared.usage = served.usage
        settlement.close(
            Outcome.SUCCEEDED,
            served.usage,
            provider=served.provider,
            upstream_model=served.upstream_model,
            upstream_request_id=served.upstream_request_id,
            model=served.model,
        )
        if not prepared.scan_responses:
            return completion.body_json
        # Billed above whatever happens now: the upstream served the answer.
        try:
            return await scan_completion(completion.body_json, self._response_inspector(prepared))
        except ResponseBlocked as blocked:
            raise policy_violation("response", blocked.kinds) from None
        except ValueError:
            raise ServiceUnavailable(
                "policy returned a redaction that does not match the response", code="policy_error"
            ) from None

    def stream(self, prepared: Prepared) -> StreamSession:
        """Start consuming the router stream in its own task; read the session's queue for chunks."""
        scan = self._response_inspector(prepared) if prepared.scan_responses else None
        return self.pump.start(prepared, scan)

    async def stream_started(self, prepared: Prepared) -> tuple[StreamSession, StreamItem]:
        """:meth:`stream`, and its first item: it decides the HTTP status, so a failure before any chunk is raised
        here as a proper HTTP error. A caller that goes away meanwhile leaves the stream to drain and bill."""
        session = self.stream(prepared)
        try:
            first = await session.queue.get()
        except asyncio.CancelledError:
            session.client_disconnected()
            raise
        if isinstance(first, StreamFailed):
            raise first.error
        return session, first

    async def drain(self, timeout: float) -> None:
        """Shutdown: let router streams (including those whose client left) finish and bill, then cut the rest."""
        await self.pump.drain(timeout)
        await self.unknown_holds.aclose()

