"""POST /v1/chat/completions through the real app (ASGI) against fake gRPC services and the real broker."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx2
import orjson
import pytest
from ingress_fakes import GOOD_KEY, STREAM_PIECES, Failure, Fakes, auth, make_settings, usage_event, usage_events
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate_ingress.api import create_app
from tollgate_ingress.deps import Deps
from tollgate_ingress.tokens import PromptTokenCounter

CHAT = "/v1/chat/completions"


def body(**extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}], **extra}


async def test_non_streaming_returns_upstream_body_and_publishes_usage(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    resp = await client.post(CHAT, json=body(metadata={"feature": "search", "n": 3}, user="end-user-7"),
                             headers={**auth(), "X-Tollgate-Tags": "env=prod"})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["choices"][0]["message"]["content"] == "echo: hello world"
    assert data["usage"]["total_tokens"] == 19
    request_id = resp.headers["x-request-id"]
    assert request_id.startswith("req_")

    call = fakes.billing.authorize_calls[-1]
    assert call.request_id == request_id
    assert call.api_key == GOOD_KEY
    assert call.prompt_tokens == 3 + 1 + 2 + 3  # OpenAI's formula: "user" is 1 token, "hello world" 2
    assert call.max_output_tokens == 0

    env, event, key = await usage_event(broker, request_id)
    assert key == b"acct_1"
    assert env.source == "//tollgate/ingress"
    assert env.type == "tollgate.usage.v1.usage.recorded"
    assert env.subject == "acct_1"
    assert event.hold_id == request_id and event.request_id == request_id
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED
    assert not event.streamed
    assert (event.usage.prompt_tokens, event.usage.completion_tokens, event.usage.total_tokens) == (12, 7, 19)
    assert event.usage.cached_prompt_tokens == 2 and event.usage.reasoning_tokens == 1
    assert (event.provider, event.upstream_model, event.upstream_request_id) == ("fakeai", "gpt-fake-2024", "up_1")
    assert (event.team, event.project, event.key_id, event.model) == ("team-a", "proj-x", "key_1", "gpt-4o-mini")
    assert dict(event.tags) == {"feature": "search", "user": "end-user-7", "env": "prod"}


async def test_fallbacks_and_aliases_are_held_for_and_the_served_model_is_what_usage_records(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    """Every model the request may reach goes to billing (aliases resolved to catalogue names); the router gets
    them as the only models it may serve; the usage event carries the model served, the requested one beside it."""
    fakes.router.served_model = "claude-3-5-haiku"
    resp = await client.post(CHAT, json=body(models=["haiku-latest", "gpt-4o-mini"]), headers=auth())
    assert resp.status_code == 200, resp.text
    call = fakes.billing.authorize_calls[-1]
    assert (call.model, list(call.fallback_models)) == ("gpt-4o-mini", ["claude-3-5-haiku"])
    assert list(fakes.router.requests[-1].authorized_models) == ["gpt-4o-mini", "claude-3-5-haiku"]
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert (event.model, event.requested_model) == ("claude-3-5-haiku", "gpt-4o-mini")

    resp = await client.post(CHAT, json=body(stream=True, models=["haiku-latest"]), headers=auth())
    assert resp.status_code == 200
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert (event.model, event.requested_model) == ("claude-3-5-haiku", "gpt-4o-mini")

    for bad in ("gpt-4o", [""], [1], ["m"] * 17):
        resp = await client.post(CHAT, json=body(models=bad), headers=auth())
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["param"] == "models"


async def test_a_broken_stream_is_estimated_at_the_holds_model(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    """Nothing reports what was served when the stream breaks: the estimate is rated at the model the hold was
    sized for (the dearest candidate), never below what may have been served."""
    fakes.router.fail_after_chunks = 2
    resp = await client.post(CHAT, json=body(stream=True, models=["claude-3-5-haiku"]), headers=auth())
    assert resp.status_code == 200
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED and event.usage.completion_tokens > 0
    assert event.model == "claude-3-5-haiku"


async def test_streaming_sends_chunks_usage_chunk_and_done(client: httpx2.AsyncClient, broker: str) -> None:
    resp = await client.post(CHAT, json=body(stream=True, stream_options={"include_usage": True}), headers=auth())
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == "Hello there!"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 12 and last["usage"]["completion_tokens"] == 7
    assert all((c["id"], c["model"], c["created"]) == ("chatcmpl-upstream42", "gpt-fake-2024", 1_700_000_000)
               for c in chunks)
    assert all("usage" not in c for c in chunks[:-1])

    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.streamed and event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED
    assert event.usage.completion_tokens == 7 and event.upstream_request_id == "up_2"


async def test_streaming_without_include_usage_has_no_usage_chunk(client: httpx2.AsyncClient) -> None:
    resp = await client.post(CHAT, json=body(stream=True), headers=auth())
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(orjson.loads(e[6:])["choices"] for e in events[:-1])
    assert len(events) == 5


async def test_error_before_first_chunk_is_an_http_error_and_closes_the_hold(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    fakes.router.failure = Failure(grpc.StatusCode.UNAVAILABLE, "all providers down", "upstream_unavailable")
    resp = await client.post(CHAT, json=body(stream=True), headers=auth())
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "upstream_error"
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED
    assert event.usage.total_tokens == 0
    assert not event.usage_unknown  # refused before it reached a provider: nothing to bill


@pytest.mark.parametrize("stream", [False, True])
async def test_a_timeout_the_provider_may_bill_carries_the_prompt_estimate_and_usage_unknown(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str, stream: bool
) -> None:
    """The router sent the request and got no answer (its usage-unknown trailer): the usage event carries the
    prompt estimate the hold was sized with and no output, flagged, for billing to charge per its setting."""
    fakes.router.failure = Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "upstream timed out", "upstream_timeout",
                                   usage_unknown=True)
    resp = await client.post(CHAT, json=body(stream=stream), headers=auth())
    assert resp.status_code == 504
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED
    assert event.usage_unknown
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (3 + 1 + 2 + 3, 0)
    assert event.usage.total_tokens == event.usage.prompt_tokens


async def test_ingress_own_deadline_cutting_the_router_call_counts_as_usage_unknown(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    """DEADLINE_EXCEEDED without the router's reason: ingress's own deadline passed, and the router then cancels an
    attempt the provider may be serving, so the request is charged by estimate like a router-reported timeout."""
    fakes.router.failure = Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", "")
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 504
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.usage_unknown and event.usage.prompt_tokens == 3 + 1 + 2 + 3


async def test_error_mid_stream_becomes_an_sse_error_event(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    fakes.router.fail_after_chunks = 2
    resp = await client.post(CHAT, json=body(stream=True), headers=auth())
    assert resp.status_code == 200
    events = [e for e in resp.text.split("\n\n") if e]
    assert len(events) == 3
    error = orjson.loads(events[-1][6:])
    assert error["error"]["type"] == "upstream_error"
    assert "[DONE]" not in resp.text
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED
    # Output reached the client before the break: the upstream served it, so it is billed by estimate —
    # the prompt as counted for the hold, the delivered text with the same tokenizer.
    delivered = "".join(STREAM_PIECES[:2])
    assert event.usage.prompt_tokens == 3 + 1 + 2 + 3
    assert event.usage.completion_tokens == PromptTokenCounter().text(delivered) > 0
    assert event.usage.total_tokens == event.usage.prompt_tokens + event.usage.completion_tokens


async def test_error_before_any_chunk_bills_nothing(client: httpx2.AsyncClient, fakes: Fakes, broker: str) -> None:
    fakes.router.fail_after_chunks = 0
    resp = await client.post(CHAT, json=body(stream=True), headers=auth())
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED
    assert event.usage.total_tokens == 0


async def test_upstream_failure_non_streaming_is_502_and_billed_as_failed(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    fakes.router.failure = Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "upstream timed out", "upstream_timeout")
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 504
    assert resp.json()["error"]["type"] == "timeout_error"
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED


async def test_unknown_model_from_router_is_404(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.router.failure = Failure(grpc.StatusCode.NOT_FOUND, "no provider serves gpt-9", "model_not_found")
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 404
    assert resp.json()["error"] == {"message": "no provider serves gpt-9", "type": "invalid_request_error",
                                    "code": "model_not_found", "param": None}


async def test_a_catalogue_model_without_a_price_is_400_model_not_priced(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    fakes.billing.authorize_failure = Failure(grpc.StatusCode.INVALID_ARGUMENT, "The model 'claude-3-5-haiku' has "
                                              "no price, so this gateway cannot serve it.", "model_not_priced")
    resp = await client.post(CHAT, json=body(model="claude-3-5-haiku"), headers=auth())
    assert resp.status_code == 400
    assert resp.json()["error"] == {"message": "The model 'claude-3-5-haiku' has no price, so this gateway cannot "
                                    "serve it.", "type": "invalid_request_error", "code": "model_not_priced",
                                    "param": "model"}
    assert fakes.router.bodies == [], "never served (free)"


async def test_a_model_neither_priced_nor_in_the_catalogue_is_404_model_not_found(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    fakes.billing.authorize_failure = Failure(grpc.StatusCode.INVALID_ARGUMENT, "no price", "model_not_priced")
    resp = await client.post(CHAT, json=body(model="gpt-9"), headers=auth())
    assert resp.status_code == 404
    assert resp.json()["error"] == {"message": "The model 'gpt-9' does not exist or is not served by this gateway.",
                                    "type": "invalid_request_error", "code": "model_not_found", "param": "model"}


async def test_policy_block_is_403_without_the_data_and_billed_as_blocked(
    client: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    card = "4111 1111 1111 1111"
    fakes.policy.rules[card] = ("payment_card", ppb.ACTION_BLOCK)
    resp = await client.post(CHAT, json=body(messages=[{"role": "user", "content": f"my card is {card}"}]),
                             headers=auth())
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "policy_violation" and error["type"] == "permission_error"
    assert "payment_card" in error["message"]
    assert card not in resp.text
    assert fakes.router.bodies == [], "the upstream must never be called"
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_BLOCKED
    assert event.usage.total_tokens == 0


async def test_redaction_rewrites_every_text_part_in_place(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.policy.rules["bob@example.com"] = ("email", ppb.ACTION_REDACT)
    messages = [
        {"role": "system", "content": "Reply to bob@example.com"},
        {"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "image_url", "image_url": {"url": "https://img.example/x.png"}},
            {"type": "text", "text": "mail bob@example.com now"},
        ]},
    ]
    resp = await client.post(CHAT, json=body(messages=messages, temperature=0.2, tools=[]), headers=auth())
    assert resp.status_code == 200, resp.text
    assert fakes.policy.inspected[-1] == ["Reply to bob@example.com", "first", "mail bob@example.com now"]
    sent = fakes.router.bodies[-1]
    assert "bob@example.com" not in orjson.dumps(sent).decode()
    assert sent["messages"][0]["content"] == "Reply to [EMAIL_1]"
    assert sent["messages"][1]["content"][2]["text"] == "mail [EMAIL_1] now"
    assert sent["messages"][1]["content"][1] == messages[1]["content"][1]  # type: ignore[index]
    assert sent["temperature"] == 0.2 and sent["tools"] == []


async def test_allowed_body_is_forwarded_byte_for_byte(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata":{"k":"v"},"seed":7}'
    resp = await client.post(CHAT, content=raw, headers=auth())
    assert resp.status_code == 200
    assert fakes.router.bodies[-1] == orjson.loads(raw)


async def test_policy_without_verdict_fails_closed(client: httpx2.AsyncClient, fakes: Fakes, broker: str) -> None:
    fakes.policy.verdict_override = ppb.VERDICT_UNSPECIFIED
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 503
    assert fakes.router.bodies == []
    _env, event, _key = await usage_event(broker, resp.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED


async def test_insufficient_balance_is_402_and_publishes_nothing(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.billing.authorize_failure = Failure(grpc.StatusCode.FAILED_PRECONDITION, "balance too low",
                                              "insufficient_balance")
    resp = await client.post(CHAT, json=body(max_tokens=100), headers=auth())
    assert resp.status_code == 402
    assert resp.json()["error"]["type"] == "insufficient_quota"
    assert resp.json()["error"]["code"] == "insufficient_balance"
    assert fakes.billing.authorize_calls[-1].max_output_tokens == 100
    assert fakes.router.bodies == [] and fakes.policy.inspected == []


async def test_rate_limit_is_429_with_retry_after(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.billing.authorize_failure = Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "60 rpm", "rate_limited", 17)
    resp = await client.post(CHAT, json=body(), headers=auth())
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "17"
    assert resp.json()["error"]["type"] == "rate_limit_error"


async def test_unknown_key_is_401(client: httpx2.AsyncClient) -> None:
    resp = await client.post(CHAT, json=body(), headers=auth("tg-nope"))
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"


async def test_missing_or_malformed_authorization_is_401_before_anything_else(
    client: httpx2.AsyncClient, fakes: Fakes
) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        resp = await client.post(CHAT, content=b"{not json", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["type"] == "authentication_error"
    assert fakes.billing.authorize_calls == []


async def test_malformed_json_is_400_invalid_json(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    resp = await client.post(CHAT, content=b'{"model": "gpt-4o-mini", "messa', headers=auth())
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert resp.headers["x-request-id"].startswith("req_")
    assert fakes.billing.authorize_calls == []


async def test_bad_fields_are_400_naming_the_param(client: httpx2.AsyncClient) -> None:
    cases = [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        (body(max_tokens=-1), "max_tokens"),
        (body(max_completion_tokens="10"), "max_completion_tokens"),
        (body(n=200), "n"),
        (body(stream="yes"), "stream"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (body(messages=[{"content": "x"}]), "messages[0].role"),
    ]
    for payload, param in cases:
        resp = await client.post(CHAT, json=payload, headers=auth())
        assert resp.status_code == 400, (payload, resp.text)
        assert resp.json()["error"]["param"] == param, payload


async def test_every_hold_is_closed_exactly_once(client: httpx2.AsyncClient, fakes: Fakes, broker: str) -> None:
    ids = []
    for stream in (False, True, False, True):
        resp = await client.post(CHAT, json=body(stream=stream), headers=auth())
        ids.append(resp.headers["x-request-id"])
    fakes.router.failure = Failure(grpc.StatusCode.INTERNAL, "boom", "upstream_error")
    resp = await client.post(CHAT, json=body(), headers=auth())
    ids.append(resp.headers["x-request-id"])
    found = await usage_events(broker, set(ids))
    assert {k: len(v) for k, v in found.items()} == dict.fromkeys(ids, 1)


async def test_oversized_body_is_413(fakes: Fakes, broker: str, tmp_path: Path) -> None:
    settings = make_settings(fakes, broker, tmp_path, max_body_bytes=2048)
    deps = await Deps.start(settings)
    app = create_app(settings, deps)
    try:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as client:
            big = body(messages=[{"role": "user", "content": "x" * 4096}])
            resp = await client.post(CHAT, json=big, headers=auth())
            assert resp.status_code == 413
            assert resp.json()["error"]["code"] == "request_too_large"
            assert fakes.billing.authorize_calls == []
            assert (await client.post(CHAT, json=body(), headers=auth())).status_code == 200
    finally:
        await app.state.services.shutdown(grace=1)


async def test_the_hold_counts_every_billed_part_of_the_prompt(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    """Tool and function definitions, a response schema and a predicted output are billed as prompt tokens."""
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
        "type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(50)}}}}
    prediction = {"type": "content", "content": "a long predicted answer " * 40}
    functions = [{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    plain = (await client.post(CHAT, json=body(), headers=auth())).status_code
    base = fakes.billing.authorize_calls[-1].prompt_tokens
    counts = {}
    for name, value in (("response_format", schema), ("prediction", prediction), ("functions", functions)):
        assert (await client.post(CHAT, json=body(**{name: value}), headers=auth())).status_code == plain == 200
        counts[name] = fakes.billing.authorize_calls[-1].prompt_tokens - base
    counter = PromptTokenCounter()
    assert counts == {name: counter.text(orjson.dumps(value).decode())
                      for name, value in (("response_format", schema), ("prediction", prediction),
                                          ("functions", functions))}


async def test_upstream_gets_exactly_the_cap_the_hold_was_sized_with(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    resp = await client.post(CHAT, json=body(max_tokens=100_000, max_completion_tokens=20), headers=auth())
    assert resp.status_code == 200
    assert fakes.billing.authorize_calls[-1].max_output_tokens == 20
    forwarded = fakes.router.bodies[-1]
    assert forwarded["max_completion_tokens"] == 20 and "max_tokens" not in forwarded
    # No cap from the client: the model's cap billing held for is sent, so the answer cannot outgrow the hold.
    fakes.billing.model_output_cap = 4096
    assert (await client.post(CHAT, json=body(), headers=auth())).status_code == 200
    assert fakes.router.bodies[-1]["max_completion_tokens"] == 4096


async def test_max_tokens_beyond_int64_is_400_not_500(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    resp = await client.post(CHAT, json=body(max_tokens=2**63), headers=auth())
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    assert fakes.billing.authorize_calls == []
