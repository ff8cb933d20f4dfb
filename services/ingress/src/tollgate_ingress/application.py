"""What ingress does with a request, between the HTTP layer and the gRPC services.

A chat completion: count prompt tokens → billing.Authorize (a hold for the maximum cost) → policy.Inspect (allow,
flag, redact, block; the routing constraints the policy sets) → router.Complete or StreamComplete → when the policy
asks for it, policy.Inspect of the answer (see :mod:`tollgate_ingress.response_scan`) → exactly one
``UsageRecorded`` that closes the hold, whatever happened after the hold was placed (success, upstream failure,
policy block, a client that went away). An answer the policy blocks was still served upstream, so it is billed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from tollgate.billing.v1 import billing_service_pb2
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2
from tollgate.router.v1 import router_service_pb2

from .catalogue import ModelDirectory
from .clients import Upstreams
from .config import Settings
from .domain import ChatRequest, Outcome, Usage
from .errors import (
    IngressError,
    InternalError,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamFailed,
    from_grpc,
)
from .metrics import Metrics
from .publisher import UsagePublisher
from .response_scan import ResponseBlocked, StreamScanner, scan_completion
from .tokens import PromptTokenCounter

__all__ = [
    "Admin",
    "Authorization",
    "ChatCompletions",
    "Keys",
    "Prepared",
    "Settlement",
    "StreamEnded",
    "StreamFailed",
    "StreamSession",
]

log = logging.getLogger(__name__)

_OUTCOME_PB = {
    Outcome.SUCCEEDED: usage_pb2.REQUEST_OUTCOME_SUCCEEDED,
    Outcome.FAILED: usage_pb2.REQUEST_OUTCOME_FAILED,
    Outcome.BLOCKED: usage_pb2.REQUEST_OUTCOME_BLOCKED,
    Outcome.CLIENT_CANCELLED: usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Authorization:
    account_id: str
    key_id: str
    hold_id: str
    team: str
    project: str
    #: The candidate model the hold was sized for (the most expensive); rates a usage nothing reports a model for.
    hold_model: str = ""


def _usage(pb: router_service_pb2.Usage) -> Usage:
    return Usage(
        prompt_tokens=pb.prompt_tokens,
        completion_tokens=pb.completion_tokens,
        total_tokens=pb.total_tokens or pb.prompt_tokens + pb.completion_tokens,
        cached_prompt_tokens=pb.cached_prompt_tokens,
        reasoning_tokens=pb.reasoning_tokens,
    )


class Settlement:
    """Closes one hold with exactly one usage event, however many code paths try to."""

    __slots__ = ("_closed", "auth", "publisher", "request", "request_id", "streamed")

    def __init__(self, publisher: UsagePublisher, request: ChatRequest, request_id: str, auth: Authorization) -> None:
        self.publisher = publisher
        self.request = request
        self.request_id = request_id
        self.auth = auth
        self.streamed = request.stream
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(
        self,
        outcome: Outcome,
        usage: Usage | None = None,
        *,
        provider: str = "",
        upstream_model: str = "",
        upstream_request_id: str = "",
        model: str = "",
    ) -> None:
        """``model``: the public model the router served (what metering rates). Without one (nothing served, or
        usage estimated after a broken stream) the hold's model is rated: the most expensive candidate, so an
        estimate is never priced below what may have been served."""
        if self._closed:
            return
        self._closed = True
        u = usage or Usage()
        self.publisher.publish(
            usage_pb2.UsageRecorded(
                request_id=self.request_id,
                account_id=self.auth.account_id,
                key_id=self.auth.key_id,
                hold_id=self.auth.hold_id or self.request_id,
                model=model or self.auth.hold_model or self.request.model,
                requested_model=self.request.model,
                provider=provider,
                upstream_model=upstream_model,
                upstream_request_id=upstream_request_id,
                usage=usage_pb2.TokenUsage(
                    prompt_tokens=u.prompt_tokens,
                    completion_tokens=u.completion_tokens,
                    total_tokens=u.total_tokens,
                    cached_prompt_tokens=u.cached_prompt_tokens,
                    reasoning_tokens=u.reasoning_tokens,
                ),
                outcome=_OUTCOME_PB[outcome],
                streamed=self.streamed,
                occurred_at_unix_ms=int(time.time() * 1000),
                team=self.auth.team,
                project=self.auth.project,
                tags=self.request.tags,
            )
        )


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
    constraints: policy_service_pb2.RoutingConstraints = field(default_factory=policy_service_pb2.RoutingConstraints)
    #: The policy wants the answer inspected before the caller sees it.
    scan_responses: bool = False
    #: The catalogue models billing checked and held for: the router may serve no other.
    authorized_models: list[str] = field(default_factory=list)
    #: The usage billed for a non-streamed answer, once :meth:`ChatCompletions.complete` has it (the other wire
    #: formats report it in their own shape).
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class StreamEnded:
    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamFailed:
    error: IngressError


StreamItem = bytes | StreamEnded | StreamFailed


@dataclass(eq=False)
class StreamSession:
    """One router stream, consumed by its own task so that the upstream is drained and billed even when the
    HTTP client goes away; the HTTP response reads :attr:`queue`."""

    prepared: Prepared
    queue: asyncio.Queue[StreamItem] = field(default_factory=asyncio.Queue)
    client_gone: bool = False
    task: asyncio.Task[None] | None = None

    def client_disconnected(self) -> None:
        self.client_gone = True


class ChatCompletions:
    def __init__(
        self,
        upstreams: Upstreams,
        publisher: UsagePublisher,
        counter: PromptTokenCounter,
        metrics: Metrics,
        settings: Settings,
        directory: ModelDirectory | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.directory = directory or ModelDirectory(upstreams)
        self.publisher = publisher
        self.counter = counter
        self.metrics = metrics
        self.rpc_timeout = settings.rpc_timeout_seconds
        self.router_timeout = settings.router_timeout_seconds
        self._streams: set[asyncio.Task[None]] = set()
        latency = metrics.upstream_seconds
        self._authorize_seconds = latency.labels("billing", "Authorize")
        self._inspect_seconds = latency.labels("policy", "Inspect")
        self._complete_seconds = latency.labels("router", "Complete")
        self._stream_seconds = latency.labels("router", "StreamComplete")

    # --- before the router --------------------------------------------------------------------------------------
    async def prepare(self, api_key: str, request_id: str, request: ChatRequest) -> Prepared:
        """Authorize (place the hold) and apply the DLP verdict. After the hold is placed, every way out of here
        closes it."""
        prompt_tokens = self.counter.messages(request.messages, request.tools)
        candidates = await self.directory.resolve(request.candidate_models)
        auth = await self._authorize(api_key, request_id, request, prompt_tokens, candidates)
        settlement = Settlement(self.publisher, request, request_id, auth)
        try:
            body, reply = await self._inspect(request_id, auth, request, settlement)
        except BaseException:
            settlement.close(Outcome.FAILED)  # no-op when the block already closed it
            raise
        return Prepared(
            request=request,
            request_id=request_id,
            body_json=body,
            settlement=settlement,
            prompt_tokens=prompt_tokens,
            constraints=reply.constraints,
            scan_responses=reply.scan_responses,
            authorized_models=candidates,
        )

    async def _authorize(
        self, api_key: str, request_id: str, request: ChatRequest, prompt_tokens: int, candidates: list[str]
    ) -> Authorization:
        started = time.perf_counter()
        try:
            reply = await self.upstreams.billing.Authorize(
                billing_service_pb2.AuthorizeRequest(
                    api_key=api_key,
                    request_id=request_id,
                    model=candidates[0],
                    prompt_tokens=prompt_tokens,
                    max_output_tokens=request.max_output_tokens,
                    fallback_models=candidates[1:],
                ),
                timeout=self.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="billing") from None
        finally:
            self._authorize_seconds.observe(time.perf_counter() - started)
        return Authorization(
            account_id=reply.account_id,
            key_id=reply.key_id,
            hold_id=reply.hold_id or request_id,
            team=reply.team,
            project=reply.project,
            hold_model=reply.hold_model,
        )

    async def _policy_inspect(self, request: policy_service_pb2.InspectRequest) -> policy_service_pb2.InspectResponse:
        started = time.perf_counter()
        try:
            reply: policy_service_pb2.InspectResponse = await self.upstreams.policy.Inspect(
                request, timeout=self.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="policy") from None
        finally:
            self._inspect_seconds.observe(time.perf_counter() - started)
        return reply

    async def _inspect(
        self, request_id: str, auth: Authorization, request: ChatRequest, settlement: Settlement
    ) -> tuple[bytes, policy_service_pb2.InspectResponse]:
        """The body to forward and policy's answer. Always asked, even without text: the policy also decides which
        models and providers the request may use."""
        reply = await self._policy_inspect(
            policy_service_pb2.InspectRequest(
                request_id=request_id,
                account_id=auth.account_id,
                texts=request.prompt_texts(),
                key_id=auth.key_id,
                team=auth.team,
                model=request.model,
                direction=policy_service_pb2.DIRECTION_REQUEST,
            )
        )
        if reply.verdict in (policy_service_pb2.VERDICT_ALLOW, policy_service_pb2.VERDICT_FLAG):
            return request.raw, reply
        if reply.verdict == policy_service_pb2.VERDICT_BLOCK:
            settlement.close(Outcome.BLOCKED)
            if reply.rule:
                raise PermissionDenied(
                    f"The request was blocked by the account's policy (rule {reply.rule}): "
                    + _RULE_MESSAGES.get(reply.rule, "the policy does not allow this request"),
                    code="policy_violation",
                )
            raise _policy_violation("request", reply.findings)
        if reply.verdict == policy_service_pb2.VERDICT_REDACT:
            try:
                return request.redacted_body(reply.redacted_texts), reply
            except ValueError:
                raise ServiceUnavailable(
                    "policy returned a redaction that does not match the prompt", code="policy_error"
                ) from None
        # Fail closed: a DLP answer we do not understand must not let the prompt leave.
        raise ServiceUnavailable("policy returned no verdict", code="policy_error")

    def _response_inspector(self, prepared: Prepared) -> Callable[[list[str], int], Awaitable[Any]]:
        """Inspects the model's answer under the same context as the prompt (direction RESPONSE)."""
        auth = prepared.settlement.auth

        async def inspect(texts: list[str], sequence: int) -> policy_service_pb2.InspectResponse:
            reply = await self._policy_inspect(
                policy_service_pb2.InspectRequest(
                    request_id=prepared.request_id,
                    account_id=auth.account_id,
                    texts=texts,
                    key_id=auth.key_id,
                    team=auth.team,
                    model=prepared.request.model,
                    direction=policy_service_pb2.DIRECTION_RESPONSE,
                    sequence=sequence,
                )
            )
            if reply.verdict not in _VERDICTS:
                raise ServiceUnavailable("policy returned no verdict", code="policy_error")
            return reply

        return inspect

    # --- the router -------------------------------------------------------------------------------------------
    def _router_request(self, prepared: Prepared) -> router_service_pb2.CompleteRequest:
        return router_service_pb2.CompleteRequest(
            request_id=prepared.request_id,
            account_id=prepared.settlement.auth.account_id,
            model=prepared.request.model,
            body_json=prepared.body_json,
            constraints=routing_constraints(prepared.constraints),
            key_id=prepared.settlement.auth.key_id,
            authorized_models=prepared.authorized_models,
        )

    async def complete(self, prepared: Prepared) -> bytes:
        """Non-streaming: the upstream's OpenAI body, as it came."""
        settlement = prepared.settlement
        started = time.perf_counter()
        try:
            reply = await self.upstreams.router.Complete(self._router_request(prepared), timeout=self.router_timeout)
        except grpc.aio.AioRpcError as exc:
            settlement.close(Outcome.FAILED)
            raise from_grpc(exc, service="router") from None
        except BaseException:
            settlement.close(Outcome.FAILED)
            raise
        finally:
            self._complete_seconds.observe(time.perf_counter() - started)
        prepared.usage = _usage(reply.usage)
        settlement.close(
            Outcome.SUCCEEDED,
            prepared.usage,
            provider=reply.provider,
            upstream_model=reply.upstream_model,
            upstream_request_id=reply.upstream_request_id,
            model=reply.model,
        )
        if not prepared.scan_responses:
            return reply.body_json
        # Billed above whatever happens now: the upstream served the answer.
        try:
            return await scan_completion(reply.body_json, self._response_inspector(prepared))
        except ResponseBlocked as blocked:
            raise _policy_violation("response", (), blocked.kinds) from None
        except ValueError:
            raise ServiceUnavailable(
                "policy returned a redaction that does not match the response", code="policy_error"
            ) from None

    def stream(self, prepared: Prepared) -> StreamSession:
        """Start consuming the router stream in its own task; read the session's queue for chunks."""
        session = StreamSession(prepared)
        session.task = asyncio.create_task(self._pump(session), name=f"stream-{prepared.request_id}")
        self._streams.add(session.task)
        session.task.add_done_callback(self._streams.discard)
        return session

    async def _pump(self, session: StreamSession) -> None:
        settlement = session.prepared.settlement
        queue = session.queue
        usage: Usage | None = None
        end: router_service_pb2.StreamEnd | None = None
        delivered: list[bytes] = []  # chunks already sent on: billed by estimate if the stream breaks after them
        scanner = StreamScanner(self._response_inspector(session.prepared)) if session.prepared.scan_responses else None
        stopped = False  # the policy stopped the answer: keep draining (and billing) the upstream, send nothing more
        started = time.perf_counter()
        self.metrics.streams_in_flight.inc()
        try:
            call = self.upstreams.router.StreamComplete(
                self._router_request(session.prepared), timeout=self.router_timeout
            )
            async for message in call:
                if message.HasField("chunk_json"):
                    delivered.append(message.chunk_json)
                    if stopped or (scanner is not None and session.client_gone):
                        continue  # nobody to send it to: drained for the usage only, no policy call
                    if scanner is None:
                        if not session.client_gone:
                            queue.put_nowait(message.chunk_json)
                        continue
                    stopped = not await self._forward(session, scanner.feed(message.chunk_json))
                elif message.HasField("end"):
                    end = message.end
                    usage = _usage(end.usage)
            if scanner is not None and not stopped and not session.client_gone:
                stopped = not await self._forward(session, scanner.finish())
        except grpc.aio.AioRpcError as exc:
            settlement.close(Outcome.FAILED, self._estimate(session.prepared, delivered))
            queue.put_nowait(StreamFailed(from_grpc(exc, service="router")))
        except asyncio.CancelledError:
            settlement.close(
                Outcome.CLIENT_CANCELLED if session.client_gone else Outcome.FAILED,
                self._estimate(session.prepared, delivered),
            )
            queue.put_nowait(StreamFailed(ServiceUnavailable("the server is shutting down", code="shutting_down")))
            raise
        except Exception:
            log.exception("router stream failed unexpectedly")
            settlement.close(Outcome.FAILED, self._estimate(session.prepared, delivered))
            queue.put_nowait(StreamFailed(InternalError("internal error while streaming")))
        else:
            if end is None or usage is None:
                # The router promises a last `end` message; without one, bill what was delivered, by estimate.
                settlement.close(Outcome.FAILED, self._estimate(session.prepared, delivered))
                queue.put_nowait(StreamFailed(UpstreamFailed("the upstream stream ended without usage")))
                return
            settlement.close(
                Outcome.CLIENT_CANCELLED if session.client_gone else Outcome.SUCCEEDED,
                usage,
                provider=end.provider,
                upstream_model=end.upstream_model,
                upstream_request_id=end.upstream_request_id,
                model=end.model,
            )
            if not stopped:
                queue.put_nowait(StreamEnded(usage))
        finally:
            self.metrics.streams_in_flight.dec()
            self._stream_seconds.observe(time.perf_counter() - started)

    async def _forward(self, session: StreamSession, scanned: Awaitable[list[bytes]]) -> bool:
        """Queue what the scanner lets through; False (after queueing the error) when the policy stops the answer
        or cannot be asked — failing closed: unscanned text never reaches the caller."""
        try:
            chunks = await scanned
        except ResponseBlocked as blocked:
            session.queue.put_nowait(StreamFailed(_policy_violation("response", (), blocked.kinds)))
            return False
        except IngressError as exc:
            session.queue.put_nowait(StreamFailed(exc))
            return False
        if not session.client_gone:
            for chunk in chunks:
                session.queue.put_nowait(chunk)
        return True

    def _estimate(self, prepared: Prepared, delivered: list[bytes]) -> Usage | None:
        """Usage for a stream that broke after output reached the client: the upstream served (and will charge
        for) the prompt and those tokens, so they are billed — counted with the same tokenizer as the hold. None
        (nothing billed) when no chunk was delivered."""
        if not delivered:
            return None
        text: list[str] = []
        for raw in delivered:
            try:
                chunk = orjson.loads(raw)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if isinstance(delta.get("content"), str):
                        text.append(delta["content"])
                    for call in delta.get("tool_calls") or ():
                        text.append(orjson.dumps(call.get("function") or {}).decode())
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                continue
        completion = self.counter.text("".join(text))
        return Usage(
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=completion,
            total_tokens=prepared.prompt_tokens + completion,
        )

    async def drain(self, timeout: float) -> None:
        """Shutdown: let router streams (including those whose client left) finish and bill, then cut the rest."""
        if not self._streams:
            return
        _done, pending = await asyncio.wait(set(self._streams), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


_VERDICTS = frozenset(
    {
        policy_service_pb2.VERDICT_ALLOW,
        policy_service_pb2.VERDICT_FLAG,
        policy_service_pb2.VERDICT_REDACT,
        policy_service_pb2.VERDICT_BLOCK,
    }
)

#: What a routing rule means, for the 403's message (the rule's name is always given too).
_RULE_MESSAGES = {
    "model_not_allowed": "the model is not on the allowed list",
    # The team's and the key's allow-lists exclude each other: nothing is left to route to.
    "provider_not_allowed": "the provider limits that apply leave no allowed provider",
    "region_not_allowed": "the region limits that apply leave no allowed region",
}


def _policy_violation(
    what: str, findings: Iterable[policy_service_pb2.Finding], kinds: Iterable[str] = ()
) -> PermissionDenied:
    """403 policy_violation naming the finding types (never the matched data, which must not be echoed or logged)."""
    found = list(kinds) or _unique(f.type for f in findings if f.action == policy_service_pb2.ACTION_BLOCK)
    found = found or _unique(f.type for f in findings)
    subject = "The request" if what == "request" else "The model's response"
    return PermissionDenied(
        f"{subject} was blocked by the account's data policy: it contains "
        + (", ".join(found) if found else "data the policy forbids"),
        code="policy_violation",
    )


def routing_constraints(pb: policy_service_pb2.RoutingConstraints) -> router_service_pb2.RoutingConstraints:
    """Policy's routing constraints in the router's message (the same four lists)."""
    return router_service_pb2.RoutingConstraints(
        allowed_providers=pb.allowed_providers,
        denied_providers=pb.denied_providers,
        allowed_regions=pb.allowed_regions,
        allowed_models=pb.allowed_models,
    )


class Keys:
    """Queries an API key's holder may make about itself (``/v1/key``, ``/v1/models``)."""

    #: Cached model lists (one per key: each key's policy may allow different models); the oldest go first.
    MAX_CACHED_LISTS = 1024

    def __init__(self, upstreams: Upstreams, settings: Settings, models_ttl: float = 10.0) -> None:
        self.upstreams = upstreams
        self.rpc_timeout = settings.rpc_timeout_seconds
        self.models_ttl = models_ttl
        self._models: dict[tuple[str, str], tuple[float, router_service_pb2.ListModelsResponse]] = {}

    async def key_info(self, api_key: str) -> billing_service_pb2.GetKeyInfoResponse:
        try:
            return await self.upstreams.billing.GetKeyInfo(
                billing_service_pb2.GetKeyInfoRequest(api_key=api_key), timeout=self.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="billing") from None

    async def models(self, api_key: str, request_id: str = "") -> router_service_pb2.ListModelsResponse:
        """The catalogue's models this key may use: policy's routing constraints for the key (an Inspect with no
        text and no model), applied by the router. Cached per key for ``models_ttl``."""
        info = await self.key_info(api_key)  # authenticates the caller
        cache_key = (info.account_id, info.key_id)
        now = time.monotonic()
        cached = self._models.get(cache_key)
        if cached is not None and now - cached[0] < self.models_ttl:
            return cached[1]
        try:
            policy = await self.upstreams.policy.Inspect(
                policy_service_pb2.InspectRequest(
                    request_id=request_id, account_id=info.account_id, key_id=info.key_id
                ),
                timeout=self.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="policy") from None
        try:
            reply = await self.upstreams.router.ListModels(
                router_service_pb2.ListModelsRequest(constraints=routing_constraints(policy.constraints)),
                timeout=self.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="router") from None
        self._models.pop(cache_key, None)
        self._models[cache_key] = (now, reply)
        while len(self._models) > self.MAX_CACHED_LISTS:
            del self._models[next(iter(self._models))]
        return reply


class Admin:
    """Operator commands, passed to billing and policy; the HTTP layer has already validated and converted."""

    def __init__(self, upstreams: Upstreams, settings: Settings) -> None:
        self.upstreams = upstreams
        self.rpc_timeout = settings.rpc_timeout_seconds

    async def _billing(self, rpc: str, request: object) -> object:
        try:
            return await getattr(self.upstreams.billing, rpc)(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="billing") from None

    async def _policy(self, rpc: str, request: object) -> object:
        try:
            return await getattr(self.upstreams.policy, rpc)(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="policy") from None

    async def create_account(self, name: str, currency: str, account_id: str) -> billing_service_pb2.Account:
        reply = await self._billing(
            "CreateAccount",
            billing_service_pb2.CreateAccountRequest(name=name, currency=currency, account_id=account_id),
        )
        assert isinstance(reply, billing_service_pb2.CreateAccountResponse)
        return reply.account

    async def create_key(
        self, request: billing_service_pb2.CreateApiKeyRequest
    ) -> billing_service_pb2.CreateApiKeyResponse:
        reply = await self._billing("CreateApiKey", request)
        assert isinstance(reply, billing_service_pb2.CreateApiKeyResponse)
        return reply

    async def add_credits(
        self, account_id: str, amount_nanos: int, idempotency_key: str, description: str
    ) -> billing_service_pb2.AddCreditsResponse:
        reply = await self._billing(
            "AddCredits",
            billing_service_pb2.AddCreditsRequest(
                account_id=account_id, amount_nanos=amount_nanos, idempotency_key=idempotency_key,
                description=description,
            ),
        )
        assert isinstance(reply, billing_service_pb2.AddCreditsResponse)
        return reply

    async def balance(self, account_id: str) -> billing_service_pb2.GetBalanceResponse:
        reply = await self._billing("GetBalance", billing_service_pb2.GetBalanceRequest(account_id=account_id))
        assert isinstance(reply, billing_service_pb2.GetBalanceResponse)
        return reply

    async def ledger(self, account_id: str, limit: int) -> billing_service_pb2.ListLedgerEntriesResponse:
        reply = await self._billing(
            "ListLedgerEntries", billing_service_pb2.ListLedgerEntriesRequest(account_id=account_id, limit=limit)
        )
        assert isinstance(reply, billing_service_pb2.ListLedgerEntriesResponse)
        return reply

    async def set_policy(
        self, account_id: str, rules: list[policy_service_pb2.PolicyRule]
    ) -> policy_service_pb2.PolicySet:
        reply = await self._policy("SetPolicy", policy_service_pb2.SetPolicyRequest(account_id=account_id, rules=rules))
        assert isinstance(reply, policy_service_pb2.SetPolicyResponse)
        return reply.policy

    async def get_policy(self, account_id: str) -> policy_service_pb2.PolicySet:
        reply = await self._policy("GetPolicy", policy_service_pb2.GetPolicyRequest(account_id=account_id))
        assert isinstance(reply, policy_service_pb2.GetPolicyResponse)
        return reply.policy

    async def billing_call(self, rpc: str, request: object) -> Any:
        """Any other BillingService call of the admin API (key_routes.py), errors mapped as above."""
        return await self._billing(rpc, request)

    async def policy_call(self, rpc: str, request: object) -> object:
        """Any other PolicyService call of the policy admin API (admin_routes.py), errors mapped as above."""
        return await self._policy(rpc, request)
