"""The Gemini adapter through the real router over gRPC, against the mock's generateContent endpoints.

Gemini's ``promptTokenCount`` already includes cached tokens, and its thoughts are reported apart from the
candidates: the router must report ``completion = candidates + thoughts`` with the thoughts as reasoning.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_reason, retry_after
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import DEFAULT_REPLY, MockUpstream
from tollgate_dev.mock_wire import TOOL_INPUT
from tollgate_router.errors import InvalidRequest
from tollgate_router.gemini import to_gemini

MODEL = "gemini-2.0-flash"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, Gemini"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def request(**fields: Any) -> pb.CompleteRequest:
    body = {"model": MODEL, "messages": HELLO, **fields}
    return pb.CompleteRequest(request_id="req_g", account_id="acc_g", model=MODEL, body_json=json.dumps(body).encode())


def record_for(mock: MockUpstream, upstream_request_id: str) -> dict[str, Any]:
    [record] = [c for c in mock.calls if c["id"] == upstream_request_id]
    assert record["format"] == "gemini"
    return record


def assert_normalised(usage: pb.Usage, reported: dict[str, Any]) -> None:
    thoughts = reported.get("thoughtsTokenCount", 0)
    assert usage.prompt_tokens == reported["promptTokenCount"] > 0
    assert usage.cached_prompt_tokens == reported.get("cachedContentTokenCount", 0)
    assert usage.completion_tokens == reported["candidatesTokenCount"] + thoughts
    assert usage.reasoning_tokens == thoughts
    assert usage.total_tokens == reported["totalTokenCount"]


async def collect(call: Any) -> tuple[list[dict[str, Any]], pb.StreamEnd | None]:
    chunks: list[dict[str, Any]] = []
    end = None
    while (message := await call.read()) is not grpc.aio.EOF:
        if message.WhichOneof("event") == "chunk_json":
            chunks.append(json.loads(message.chunk_json))
        else:
            end = message.end
    return chunks, end


async def test_complete_translates_generation_config_and_usage_with_cache_and_thoughts(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.cached_tokens, mock.reasoning_tokens = 6, 9
    reply = await stub.Complete(
        request(
            temperature=1.2, top_p=0.5, max_tokens=50, stop=["END"], seed=42, response_format={"type": "json_object"}
        )
    )

    record = record_for(mock, reply.upstream_request_id)
    assert record["path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert record["body"] == {
        "contents": [{"role": "user", "parts": [{"text": "Hello, Gemini"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 1.2,
            "topP": 0.5,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
            "seed": 42,
            "responseMimeType": "application/json",
        },
    }
    assert record["usage"]["thoughtsTokenCount"] == 9 and record["usage"]["cachedContentTokenCount"] == 6
    assert_normalised(reply.usage, record["usage"])
    body = json.loads(reply.body_json)
    assert body["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 9


async def test_stream_uses_sse_and_reports_the_last_usage(stub: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    chunks, end = await collect(stub.StreamComplete(request(max_tokens=5)))

    assert end is not None
    record = record_for(mock, end.upstream_request_id)
    assert record["path"] == f"/v1beta/models/{MODEL}:streamGenerateContent" and record["stream"] is True
    assert_normalised(end.usage, record["usage"])
    assert end.usage.completion_tokens == 5
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert DEFAULT_REPLY.startswith(text) and text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_json_schema_and_forced_tool_call(stub: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    reply = await stub.Complete(
        request(
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
        )
    )
    sent = record_for(mock, reply.upstream_request_id)["body"]
    assert sent["generationConfig"]["responseJsonSchema"] == schema
    assert sent["tools"] == [
        {"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": WEATHER["function"]["parameters"]}]}  # type: ignore[index]
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    choice = json.loads(reply.body_json)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == TOOL_INPUT


async def test_streamed_tool_call(stub: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    chunks, end = await collect(stub.StreamComplete(request(tools=[WEATHER], tool_choice="required")))
    assert end is not None
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [(d["id"], d["function"]["name"]) for d in deltas] == [("call_0", "get_weather")]
    assert json.loads(deltas[0]["function"]["arguments"]) == TOOL_INPUT
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_faults_map_to_grpc_statuses(stub: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    mock.faults.arm(FaultRule(fault="429", times=20, format="gemini", retry_after=2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(caught.value) == "upstream_rate_limited" and retry_after(caught.value) == 2
    mock.faults.clear()

    mock.faults.arm(FaultRule(fault="disconnect", times=20, format="gemini"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.StreamComplete(request()))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_n_above_one_is_invalid_argument(stub: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(n=2))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not mock.calls


def test_tool_history_becomes_function_call_and_response_parts() -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j"}}]},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "presence_penalty": 0.5,
    }
    request = to_gemini(body)
    assert request["contents"] == [
        {"role": "user", "parts": [{"inlineData": {"mimeType": "image/jpeg", "data": "/9j"}}]},
        {"role": "model", "parts": [{"text": "Checking."}, {"functionCall": {"name": "f", "args": {"q": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"content": "sunny"}}}]},
    ]
    assert request["generationConfig"] == {"presencePenalty": 0.5}


@pytest.mark.parametrize(
    "fields",
    [
        {"logprobs": True},
        {"parallel_tool_calls": False},
        {"temperature": 3},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
        {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    ],
)
def test_unsupported_or_malformed_requests_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        to_gemini({"messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(("effort", "budget"), [("none", 0), ("minimal", 0), ("low", 1024), ("medium", 8192),
                                                ("high", 24576)])
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, budget: int) -> None:
    request = to_gemini({"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort,
                         "max_tokens": 100})
    assert request["generationConfig"] == {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": budget}}


@pytest.mark.parametrize("effort", ["extreme", 3, ""])
def test_an_unknown_reasoning_effort_is_a_400_naming_it(effort: object) -> None:
    with pytest.raises(InvalidRequest) as refused:
        to_gemini({"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort})
    assert refused.value.param == "reasoning_effort"
