"""The official anthropic SDK as the client of ``/v1/messages``, over ASGI, with fake billing, policy and router:
what the translation sends down the chat path, and what a Messages client gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import grpc
import httpx2
import orjson
import pytest
from ingress_fakes import GOOD_KEY, Failure, Fakes, usage_event
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate_ingress.anthropic_wire import MessageStream, message_from_completion, parse_messages_request
from tollgate_ingress.domain import Usage
from tollgate_ingress.errors import InvalidRequest


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as client:
        yield client


@pytest.fixture
async def sdk(http: httpx2.AsyncClient) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url="http://ingress", api_key=GOOD_KEY, http_client=http,
                                        max_retries=0) as client:
        yield client


async def test_a_message_goes_down_the_chat_path_and_comes_back_in_anthropic_shape(
    sdk: anthropic.AsyncAnthropic, fakes: Fakes, broker: str
) -> None:
    raw = await sdk.messages.with_raw_response.create(
        model="claude-3-5-haiku", max_tokens=64, system="Be brief.", stop_sequences=["END"],
        metadata={"user_id": "user-7"}, extra_body={"temperature": 0.5},
        messages=[{"role": "user", "content": "ping"}],
    )
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "echo: ping")]
    assert message.stop_reason == "end_turn"
    # The fake upstream reported 12 prompt tokens of which 2 were cache reads: Anthropic counts them apart.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        10, 2, 7)

    sent = fakes.router.bodies[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}]
    assert (sent["max_tokens"], sent["stop"], sent["user"], sent["temperature"]) == (64, ["END"], "user-7", 0.5)
    _env, event, _key = await usage_event(broker, raw.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.model == "claude-3-5-haiku"
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (12, 7)


async def test_a_streamed_message_is_the_real_event_sequence_with_final_usage(
    sdk: anthropic.AsyncAnthropic, http: httpx2.AsyncClient
) -> None:
    async with sdk.messages.stream(model="claude-3-5-haiku", max_tokens=64,
                                   messages=[{"role": "user", "content": "stream please"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello there!"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (10, 2, 7)

    body = {"model": "claude-3-5-haiku", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "stream please"}]}
    reply = await http.post("/v1/messages", json=body, headers={"x-api-key": GOOD_KEY,
                                                                "anthropic-version": "2023-06-01"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ") for line in reply.text.splitlines() if line.startswith("event: ")]
    assert events == ["message_start", "ping", "content_block_start", *["content_block_delta"] * 4,
                      "content_block_stop", "message_delta", "message_stop"]


async def test_tools_and_tool_results_are_translated_both_ways(sdk: anthropic.AsyncAnthropic, fakes: Fakes) -> None:
    tools: Any = [{"name": "weather", "description": "Weather of a city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    await sdk.messages.create(
        model="claude-3-5-haiku", max_tokens=64, tools=tools,
        tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ],
    )
    sent = fakes.router.bodies[-1]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather of a city", "parameters": tools[0]["input_schema"]}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]


def test_an_answer_with_tool_calls_and_reasoning_becomes_blocks() -> None:
    completion = orjson.dumps({
        "id": "chatcmpl-abc", "model": "deepseek-r1",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "The user wants weather.",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 20}},
    })
    request = parse_messages_request(b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}')
    message = orjson.loads(message_from_completion(completion, request, "req_1"))
    assert message["id"] == "msg_abc" and message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
    ]
    assert message["usage"] == {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20,
                                "output_tokens": 9}


def test_streamed_tool_calls_become_tool_use_blocks_with_json_deltas() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return orjson.dumps({"id": "chatcmpl-1", "model": "m",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    stream = MessageStream(model="m", fallback_id="req_1", estimated_input_tokens=11)
    raw = b"".join([
        stream.chunk(chunk({"role": "assistant", "content": "Let me check."})),
        stream.chunk(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                            "function": {"name": "weather", "arguments": ""}}]})),
        stream.chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})),
        stream.chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})),
        stream.chunk(chunk({}, "tool_calls")),
        stream.end(Usage(prompt_tokens=11, completion_tokens=5, total_tokens=16)),
    ])
    events = [orjson.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[0]["message"]["usage"]["input_tokens"] == 11
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    assert "".join(e["delta"]["partial_json"] for e in events[6:8]) == '{"city":"Paris"}'
    assert events[9]["delta"]["stop_reason"] == "tool_use"
    assert events[9]["usage"]["output_tokens"] == 5


async def test_errors_are_anthropic_errors_the_sdk_understands(
    sdk: anthropic.AsyncAnthropic, fakes: Fakes, http: httpx2.AsyncClient, broker: str
) -> None:
    messages: Any = [{"role": "user", "content": "secret token sk-live-123"}]
    fakes.policy.rules["sk-live-123"] = ("secret", ppb.ACTION_BLOCK)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await sdk.messages.create(model="claude-3-5-haiku", max_tokens=8, messages=messages)
    assert denied.value.body["type"] == "error"  # type: ignore[index]
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "sk-live-123" not in denied.value.response.text
    _env, event, _key = await usage_event(broker, denied.value.response.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_BLOCKED

    fakes.billing.authorize_failure = Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "rate_limited", 3)
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(model="claude-3-5-haiku", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "3"
    fakes.billing.authorize_failure = None

    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        await sdk.with_options(api_key="tg-wrong").messages.create(
            model="claude-3-5-haiku", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert unauthenticated.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    for body, fragment in [
        ({"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "claude-3-5-haiku", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]},
         "messages.0.role"),
        ({"model": "claude-3-5-haiku", "max_tokens": 8, "thinking": {"type": "enabled"},
          "messages": [{"role": "user", "content": "x"}]}, "thinking.enabled.budget_tokens"),
        ({"model": "claude-3-5-haiku", "max_tokens": 8, "top_k": 5,
          "messages": [{"role": "user", "content": "x"}]}, "top_k"),
    ]:
        reply = await http.post("/v1/messages", json=body, headers={"x-api-key": GOOD_KEY})
        assert reply.status_code == 400, body
        error = reply.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert fragment in error["error"]["message"]
    reply = await http.post("/v1/messages", content=b"{not json", headers={"x-api-key": GOOD_KEY})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    reply = await http.post("/v1/messages", json={})
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"


async def test_bearer_auth_count_tokens_and_models(app: Any, sdk: anthropic.AsyncAnthropic) -> None:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app))
    async with anthropic.AsyncAnthropic(base_url="http://ingress", auth_token=GOOD_KEY, http_client=http,
                                        max_retries=0) as bearer:
        reply = await bearer.messages.create(model="claude-3-5-haiku", max_tokens=8,
                                             messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].type == "text"

    short = await sdk.messages.count_tokens(model="claude-3-5-haiku", messages=[{"role": "user", "content": "hi"}])
    longer = await sdk.messages.count_tokens(
        model="claude-3-5-haiku", system="You are a careful assistant who answers in French.",
        messages=[{"role": "user", "content": "hi"}])
    assert 0 < short.input_tokens < longer.input_tokens

    models = [m async for m in sdk.models.list()]
    assert [(m.type, m.id) for m in models] == [("model", "gpt-4o-mini"), ("model", "claude-3-5-haiku")]


def test_images_become_image_url_parts() -> None:
    raw = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What is this?"}]}]})
    parts = parse_messages_request(raw).chat_body["messages"][0]["content"]
    assert parts == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                     {"type": "text", "text": "What is this?"}]
    with pytest.raises(InvalidRequest):
        parse_messages_request(orjson.dumps({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]}))
