"""The Anthropic adapter through the real router over gRPC, against the mock's Anthropic Messages endpoint.

The mock's record holds the Messages request the router sent and the usage the mock reported in Anthropic's
convention (``input_tokens`` without cache reads); the router must report it in OpenAI's, counting each token once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_reason, retry_after
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import DEFAULT_REPLY, MockUpstream
from tollgate_dev.mock_wire import TOOL_INPUT
from tollgate_router.anthropic import to_anthropic
from tollgate_router.domain import Provider, Route
from tollgate_router.errors import InvalidRequest, UpstreamRateLimited, UpstreamUnavailable
from tollgate_router.upstream_http import status_error

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]

MODEL = "claude-3-5-haiku"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, Claude"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def request(**fields: Any) -> pb.CompleteRequest:
    body = {"model": MODEL, "messages": HELLO, **fields}
    return pb.CompleteRequest(request_id="req_a", account_id="acc_a", model=MODEL, body_json=json.dumps(body).encode())


def record_for(mock: MockUpstream, upstream_request_id: str) -> dict[str, Any]:
    [record] = [c for c in mock.calls if c["id"] == upstream_request_id]
    assert record["format"] == "anthropic"
    return record


def assert_normalised(usage: pb.Usage, reported: dict[str, Any]) -> None:
    """OpenAI's convention from Anthropic's: every cached token inside the prompt, once."""
    prompt = reported["input_tokens"] + reported["cache_read_input_tokens"] + reported["cache_creation_input_tokens"]
    assert usage.prompt_tokens == prompt > 0
    assert usage.cached_prompt_tokens == reported["cache_read_input_tokens"]
    assert usage.cache_write_tokens == reported["cache_creation_input_tokens"]
    assert usage.completion_tokens == reported["output_tokens"] > 0
    assert usage.total_tokens == prompt + reported["output_tokens"]


async def collect(call: Any) -> tuple[list[dict[str, Any]], pb.StreamEnd | None]:
    chunks: list[dict[str, Any]] = []
    end = None
    while (message := await call.read()) is not grpc.aio.EOF:
        if message.WhichOneof("event") == "chunk_json":
            chunks.append(json.loads(message.chunk_json))
        else:
            end = message.end
    return chunks, end


# ---- through the router -----------------------------------------------------------------------------------------


async def test_complete_translates_the_request_and_normalises_cached_usage(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.cached_tokens = 5
    reply = await stub.Complete(request(temperature=0.3, top_p=0.9, stop="END", user="u-1"))

    record = record_for(mock, reply.upstream_request_id)
    assert record["body"] == {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
        "system": "Be brief.",
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    assert record["usage"]["cache_read_input_tokens"] == 5
    assert_normalised(reply.usage, record["usage"])
    assert reply.provider == "mock-anthropic"
    body = json.loads(reply.body_json)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": DEFAULT_REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == reply.usage.prompt_tokens
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 5


async def test_max_tokens_cuts_the_reply_with_finish_reason_length(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    reply = await stub.Complete(request(max_completion_tokens=3))
    record = record_for(mock, reply.upstream_request_id)
    assert record["body"]["max_tokens"] == 3
    assert json.loads(reply.body_json)["choices"][0]["finish_reason"] == "length"
    assert reply.usage.completion_tokens == 3


async def test_stream_translates_the_event_sequence_and_usage(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.cached_tokens = 4
    mock.cache_write_tokens = 3
    chunks, end = await collect(stub.StreamComplete(request()))

    assert end is not None
    record = record_for(mock, end.upstream_request_id)
    assert record["stream"] is True and record["body"]["stream"] is True
    assert_normalised(end.usage, record["usage"])
    assert (end.usage.cached_prompt_tokens, end.usage.cache_write_tokens) == (4, 3)  # each priced apart
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == DEFAULT_REPLY
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("stop") == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_forced_tool_call_round_trips_as_openai_tool_calls(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    reply = await stub.Complete(request(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))

    record = record_for(mock, reply.upstream_request_id)
    assert record["body"]["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert record["body"]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    choice = json.loads(reply.body_json)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == TOOL_INPUT
    assert_normalised(reply.usage, record["usage"])


async def test_streamed_tool_call_arrives_as_argument_deltas(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    chunks, end = await collect(
        stub.StreamComplete(
            request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
        )
    )
    assert end is not None
    assert record_for(mock, end.upstream_request_id)["body"]["tool_choice"] == {"type": "tool", "name": "get_weather"}
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["id"].startswith("toolu_") and deltas[0]["function"]["name"] == "get_weather"
    assert {d["index"] for d in deltas} == {0}
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == TOOL_INPUT
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 7}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"temperature": 1.5}, "temperature"),
    ],
)
async def test_what_anthropic_cannot_honour_is_invalid_argument_before_any_call(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert param in (caught.value.details() or "")
    assert [c for c in mock.calls if c["format"] == "anthropic"] == []


async def test_rate_limit_keeps_retry_after_and_server_error_is_unavailable(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.faults.arm(FaultRule(fault="429", times=20, model=MODEL, format="anthropic", retry_after=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(caught.value) == "upstream_rate_limited" and retry_after(caught.value) == 1
    mock.faults.clear()

    mock.faults.arm(FaultRule(fault="500", times=20, model=MODEL))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.StreamComplete(request()))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert {c["status"] for c in mock.calls} == {429, 500}


async def test_a_stream_cut_before_message_stop_fails_after_the_chunks_sent(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.faults.arm(FaultRule(fault="disconnect", times=20, model=MODEL))
    received: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stub.StreamComplete(request()):
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert received and all(m.WhichOneof("event") == "chunk_json" for m in received)


# ---- translation, unit ------------------------------------------------------------------------------------------

ROUTE = Route(
    MODEL, Provider("a", "anthropic", "http://x", options={"default_max_tokens": "512"}), "claude-x", "anthropic"
)


def test_tool_history_and_images_become_anthropic_blocks() -> None:
    body = {
        "messages": [
            {"role": "developer", "content": "Rule one."},
            {"role": "system", "content": [{"type": "text", "text": "Rule two."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {"role": "user", "content": "And?"},
        ],
        "stop": ["x", "y"],
        "tool_choice": "none",
    }
    request = to_anthropic(ROUTE, body)
    assert request["model"] == "claude-x" and request["max_tokens"] == 512
    assert request["system"] == "Rule one.\n\nRule two."
    assert request["stop_sequences"] == ["x", "y"]
    assert request["tool_choice"] == {"type": "none"}
    assert request["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
                {"type": "text", "text": "And?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": 1},
        {"logprobs": True},
        {"presence_penalty": 0.5},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
        {"messages": [{"role": "tool", "content": "no id"}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": "hi",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ]
        },
    ],
)
def test_unsupported_or_malformed_requests_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        to_anthropic(ROUTE, {"messages": [{"role": "user", "content": "hi"}], **fields})


def test_defaults_are_harmless() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 1, "seed": None, "response_format": {"type": "text"}}
    assert to_anthropic(ROUTE, body)["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


async def test_silence_is_a_timeout_and_a_bad_key_is_upstream_auth(
    start_router: StartRouter, mock: MockUpstream
) -> None:
    stub = await start_router(ROUTER_UPSTREAM_TIMEOUT_SECONDS="0.3")
    mock.faults.arm(FaultRule(fault="timeout", times=20, model=MODEL))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request())
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_reason(caught.value) == "upstream_timeout"
    mock.faults.clear()

    mock.faults.arm(FaultRule(fault="401", times=20, model=MODEL))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.StreamComplete(request()))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "upstream_auth"
    assert "mock fault" not in (caught.value.details() or "")  # the provider's own text is withheld


def test_a_status_error_keeps_the_upstream_status_for_the_attempt_record() -> None:
    error = status_error(ROUTE, 503, {}, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}')
    assert isinstance(error, UpstreamUnavailable) and "busy" in error.message
    assert getattr(error, "status", None) == 503
    limited = status_error(ROUTE, 429, {"retry-after": "4"}, b"{}")
    assert isinstance(limited, UpstreamRateLimited) and limited.retry_after == 4 and limited.status == 429  # type: ignore[attr-defined]


def test_an_empty_assistant_turn_is_dropped_and_the_user_turns_merge() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "two"},
        ]
    }
    assert to_anthropic(ROUTE, body)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]


async def test_an_error_event_mid_stream_fails_after_the_chunks_sent(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.faults.arm(FaultRule(fault="overloaded", times=20, model=MODEL))
    received: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stub.StreamComplete(request()):
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Overloaded" in (caught.value.details() or "")
    assert len(received) == 2  # the role chunk and the first text, before the error event

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # HTTP 529
    assert 529 in {c["status"] for c in mock.calls}


def test_reasoning_becomes_thinking_and_reasoning_details_go_back_as_signed_blocks() -> None:
    body = {
        "reasoning": {"max_tokens": 2048},
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "reasoning_details": [
                {"type": "reasoning.text", "text": "Think.", "signature": "c2ln", "format": "anthropic-claude-v1"},
                {"type": "reasoning.encrypted", "data": "ZGF0YQ=="}],
             "tool_calls": [{"id": "toolu_1", "type": "function",
                             "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        ],
    }
    request = to_anthropic(ROUTE, body)
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert request["messages"][1]["content"][:2] == [
        {"type": "thinking", "thinking": "Think.", "signature": "c2ln"},
        {"type": "redacted_thinking", "data": "ZGF0YQ=="},
    ]
    assert "thinking" not in to_anthropic(ROUTE, {**body, "reasoning": {"enabled": False}})
    for bad in ({"reasoning": {"effort": "high"}}, {"reasoning": "high"},
                {"messages": [{"role": "user", "content": "x"},
                              {"role": "assistant", "content": "y", "reasoning_details": [{"type": "other"}]}]}):
        with pytest.raises(InvalidRequest):
            to_anthropic(ROUTE, {**body, **bad})
