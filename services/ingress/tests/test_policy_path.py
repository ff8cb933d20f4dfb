"""The policy on the chat path: request context, FLAG, rule blocks, routing constraints to the router, response
scanning (non-streaming and streamed) and /v1/models per key — the real app (ASGI) against fake gRPC services over
real gRPC and the real broker, as the other ingress tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx2
import orjson
import pytest
from ingress_fakes import FakeBilling, FakePolicy, FakeRouter, Fakes, auth, usage_event
from tollgate.billing.v1 import billing_service_pb2_grpc as bgrpc
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate.policy.v1 import policy_service_pb2_grpc as pgrpc
from tollgate.router.v1 import router_service_pb2 as rpb
from tollgate.router.v1 import router_service_pb2_grpc as rgrpc
from tollgate_common.grpc import GrpcServer, abort

CHAT = "/v1/chat/completions"
SECRET = "sk-live-PLANTED0123456789"
REPLY = (
    f"Sure. The key you asked about is {SECRET}, keep it safe. "
    + "More words follow here. " * 20
    + "The end: FORBIDDEN-WORD."
)


class ContextPolicy(FakePolicy):
    """The shared fake, plus: every request recorded whole, a settable answer for rules and constraints, and
    response rules applied only to DIRECTION_RESPONSE."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ppb.InspectRequest] = []
        self.extra = ppb.InspectResponse()
        self.response_rules: dict[str, tuple[str, int]] = {}
        self.fail_responses = False

    async def Inspect(self, request: ppb.InspectRequest, context: Any) -> ppb.InspectResponse:
        self.requests.append(request)
        if request.direction == ppb.DIRECTION_RESPONSE:
            if self.fail_responses:
                await abort(context, grpc.StatusCode.UNAVAILABLE, "policy database down", reason="unavailable")
            saved, self.rules = self.rules, self.response_rules
            try:
                return await super().Inspect(request, context)
            finally:
                self.rules = saved
        reply = await super().Inspect(request, context)
        reply.MergeFrom(self.extra)
        return reply


class ScriptedRouter(FakeRouter):
    """Answers REPLY (in small chunks when streaming) and records the router requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[rpb.CompleteRequest] = []
        self.list_requests: list[rpb.ListModelsRequest] = []

    async def Complete(self, request: rpb.CompleteRequest, context: Any) -> rpb.CompleteResponse:
        self.requests.append(request)
        self.bodies.append(orjson.loads(request.body_json))
        body = {
            "id": "chatcmpl-s",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
        return rpb.CompleteResponse(
            body_json=orjson.dumps(body),
            usage=self.usage,
            provider="fakeai",
            upstream_model="gpt-fake",
            upstream_request_id="up_s",
        )

    async def StreamComplete(
        self, request: rpb.CompleteRequest, context: Any
    ) -> AsyncIterator[rpb.StreamCompleteResponse]:
        self.requests.append(request)
        self.bodies.append(orjson.loads(request.body_json))
        for i in range(0, len(REPLY), 5):
            delta: dict[str, Any] = {"content": REPLY[i : i + 5]}
            if i == 0:
                delta["role"] = "assistant"
            yield rpb.StreamCompleteResponse(
                chunk_json=orjson.dumps(
                    {
                        "id": "chatcmpl-s",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": "gpt-fake",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                )
            )
        yield rpb.StreamCompleteResponse(
            chunk_json=orjson.dumps(
                {
                    "id": "chatcmpl-s",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "gpt-fake",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
        )
        yield rpb.StreamCompleteResponse(
            end=rpb.StreamEnd(
                usage=self.usage, provider="fakeai", upstream_model="gpt-fake", upstream_request_id="up_s"
            )
        )

    async def ListModels(self, request: rpb.ListModelsRequest, context: Any) -> rpb.ListModelsResponse:
        self.list_requests.append(request)
        return await super().ListModels(request, context)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    server = GrpcServer("127.0.0.1", 0)
    f = Fakes(FakeBilling(), ContextPolicy(), ScriptedRouter(), "")
    server.add(bgrpc.add_BillingServiceServicer_to_server, f.billing, "tollgate.billing.v1.BillingService")
    server.add(pgrpc.add_PolicyServiceServicer_to_server, f.policy, "tollgate.policy.v1.PolicyService")
    server.add(rgrpc.add_RouterServiceServicer_to_server, f.router, "tollgate.router.v1.RouterService")
    f.addr = f"127.0.0.1:{await server.start()}"
    yield f
    await server.stop(0.5)


def _policy(fakes: Fakes) -> ContextPolicy:
    assert isinstance(fakes.policy, ContextPolicy)
    return fakes.policy


def _router(fakes: Fakes) -> ScriptedRouter:
    assert isinstance(fakes.router, ScriptedRouter)
    return fakes.router


def body(**extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}], **extra}


def sse_content(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The streamed text and every data event, decoded."""
    events = [orjson.loads(e[len("data: ") :]) for e in text.split("\n\n") if e and e != "data: [DONE]"]
    content = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", ()))
    return content, events


async def test_inspect_gets_the_request_context_and_flag_is_allowed_unchanged(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    _policy(fakes).extra = ppb.InspectResponse(verdict=ppb.VERDICT_FLAG)
    _policy(fakes).verdict_override = ppb.VERDICT_FLAG
    sent = orjson.dumps(body())
    resp = await client.post(CHAT, content=sent, headers={**auth(), "content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    request = _policy(fakes).requests[0]
    assert (request.account_id, request.key_id, request.team, request.model) == (
        "acct_1",
        "key_1",
        "team-a",
        "gpt-4o-mini",
    )
    assert request.direction == ppb.DIRECTION_REQUEST and list(request.texts) == ["hello world"]
    assert request.request_id == resp.headers["x-request-id"]
    assert _router(fakes).requests[0].body_json == sent  # FLAG forwards the body untouched
    assert len(_policy(fakes).requests) == 1, "no response scan unless the policy asks for it"


async def test_constraints_and_key_go_to_the_router(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    _policy(fakes).extra = ppb.InspectResponse(
        constraints=ppb.RoutingConstraints(
            allowed_providers=["azure-eu"],
            denied_providers=["openai"],
            allowed_regions=["eu"],
            allowed_models=["gpt-4o-mini"],
        )
    )
    for stream in (False, True):
        resp = await client.post(CHAT, json=body(stream=stream), headers=auth())
        assert resp.status_code == 200, resp.text
    for request in _router(fakes).requests:
        assert request.key_id == "key_1"
        c = request.constraints
        assert (
            list(c.allowed_providers),
            list(c.denied_providers),
            list(c.allowed_regions),
            list(c.allowed_models),
        ) == (["azure-eu"], ["openai"], ["eu"], ["gpt-4o-mini"])


async def test_the_holds_prompt_estimate_goes_to_the_router(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    """The router puts it on its attempts: metering charges a request by it when this ingress dies unsettled."""
    for stream in (False, True):
        resp = await client.post(CHAT, json=body(stream=stream), headers=auth())
        assert resp.status_code == 200, resp.text
    held = [call.prompt_tokens for call in fakes.billing.authorize_calls]
    sent = [request.prompt_tokens_estimate for request in _router(fakes).requests]
    assert sent == held and len(sent) == 2 and all(n > 0 for n in sent)


@pytest.mark.parametrize(
    ("rule", "explained"),
    [
        ("model_not_allowed", "the model is not on the allowed list"),
        ("provider_not_allowed", "no allowed provider"),
        ("region_not_allowed", "no allowed region"),
    ],
)
async def test_rule_block_is_403_naming_the_rule_and_never_routed(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str, rule: str, explained: str
) -> None:
    _policy(fakes).verdict_override = ppb.VERDICT_BLOCK
    _policy(fakes).extra = ppb.InspectResponse(rule=rule)
    resp = await client.post(CHAT, json=body(model="gpt-9-secret"), headers=auth())
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "policy_violation" and error["type"] == "permission_error"
    assert rule in error["message"] and explained in error["message"]
    assert _router(fakes).requests == []
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_BLOCKED and event.usage.total_tokens == 0


async def test_response_redacted_non_streaming_and_billed(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    _policy(fakes).extra = ppb.InspectResponse(scan_responses=True)
    _policy(fakes).response_rules[SECRET] = ("secret", ppb.ACTION_REDACT)
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 200, resp.text
    assert SECRET not in resp.text
    assert resp.json()["choices"][0]["message"]["content"] == REPLY.replace(SECRET, "[SECRET_1]")
    response_calls = [r for r in _policy(fakes).requests if r.direction == ppb.DIRECTION_RESPONSE]
    assert len(response_calls) == 1 and response_calls[0].key_id == "key_1"
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.usage.total_tokens == 19


async def test_response_block_non_streaming_is_403_and_still_billed(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    _policy(fakes).extra = ppb.InspectResponse(scan_responses=True)
    _policy(fakes).response_rules[SECRET] = ("secret", ppb.ACTION_BLOCK)
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "policy_violation"
    assert "response" in resp.json()["error"]["message"] and "secret" in resp.json()["error"]["message"]
    assert SECRET not in resp.text
    events = await usage_event(broker, resp.headers["x-request-id"])
    assert events[1].outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and events[1].usage.total_tokens == 19


async def test_streamed_response_is_redacted_in_windows(client: httpx2.AsyncClient, fakes: Fakes, broker: str) -> None:
    _policy(fakes).extra = ppb.InspectResponse(scan_responses=True)
    _policy(fakes).response_rules[SECRET] = ("secret", ppb.ACTION_REDACT)
    resp = await client.post(CHAT, json=body(stream=True, stream_options={"include_usage": True}), headers=auth())
    assert resp.status_code == 200
    assert SECRET not in resp.text
    content, events = sse_content(resp.text)
    assert content == REPLY.replace(SECRET, "[SECRET_1]")
    assert events[0]["choices"][0]["delta"].get("role") == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"]["total_tokens"] == 19
    assert resp.text.endswith("data: [DONE]\n\n")
    sequences = [r.sequence for r in _policy(fakes).requests if r.direction == ppb.DIRECTION_RESPONSE]
    assert len(sequences) > 1 and sequences == list(range(len(sequences)))
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.usage.total_tokens == 19


async def test_streamed_response_block_ends_with_an_error_event_and_is_billed(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    _policy(fakes).extra = ppb.InspectResponse(scan_responses=True)
    _policy(fakes).response_rules[SECRET] = ("secret", ppb.ACTION_BLOCK)
    resp = await client.post(CHAT, json=body(stream=True), headers=auth())
    # The secret is in the first window: the status is still decidable, so it is a plain 403.
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "policy_violation" and SECRET not in resp.text
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.usage.total_tokens == 19


async def test_block_after_text_went_out_is_an_sse_error_event(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    _policy(fakes).extra = ppb.InspectResponse(scan_responses=True)
    _policy(fakes).response_rules["FORBIDDEN-WORD"] = ("keyword", ppb.ACTION_BLOCK)
    resp = await client.post(CHAT, json=body(stream=True), headers=auth())
    assert resp.status_code == 200
    content, events = sse_content(resp.text)
    assert content and REPLY.startswith(content) and "FORBIDDEN" not in content
    assert events[-1]["error"]["code"] == "policy_violation" and "keyword" in events[-1]["error"]["message"]
    assert "data: [DONE]" not in resp.text


async def test_models_pass_the_keys_constraints_and_are_cached_per_key(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    _policy(fakes).extra = ppb.InspectResponse(constraints=ppb.RoutingConstraints(allowed_models=["gpt-4o-mini"]))
    for _ in range(2):
        resp = await client.get("/v1/models", headers=auth())
        assert resp.status_code == 200
    assert len(_router(fakes).list_requests) == 1  # cached
    assert list(_router(fakes).list_requests[0].constraints.allowed_models) == ["gpt-4o-mini"]
    inspect = _policy(fakes).requests[-1]
    assert (inspect.account_id, inspect.key_id, list(inspect.texts), inspect.model) == ("acct_1", "key_1", [], "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_policy_failure_on_the_answer_fails_closed(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str, stream: bool
) -> None:
    _policy(fakes).extra = ppb.InspectResponse(scan_responses=True)
    _policy(fakes).fail_responses = True
    resp = await client.post(CHAT, json=body(stream=stream), headers=auth())
    assert resp.status_code == 503
    assert "Sure." not in resp.text and SECRET not in resp.text  # nothing unscanned reaches the caller
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.usage.total_tokens == 19
