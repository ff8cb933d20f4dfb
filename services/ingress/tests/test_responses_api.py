"""The official openai SDK as the client of ``/v1/responses``, over ASGI, with fake billing, policy and router:
what the translation sends down the chat path, and what a Responses client gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from ingress_fakes import GOOD_KEY, Fakes, auth, usage_event
from openai._models import construct_type
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate_ingress.domain import Usage
from tollgate_ingress.responses_wire import ResponseStream, parse_responses_request, response_from_completion

WEATHER: Any = [{"type": "function", "name": "weather", "description": "Weather of a city", "strict": True,
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"], "additionalProperties": False}}]


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as client:
        yield client


@pytest.fixture
async def sdk(http: httpx2.AsyncClient) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url="http://ingress/v1", api_key=GOOD_KEY, http_client=http,
                                  max_retries=0) as client:
        yield client


async def test_a_response_goes_down_the_chat_path_and_comes_back_in_responses_shape(
    sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str
) -> None:
    raw = await sdk.responses.with_raw_response.create(
        model="gpt-4o-mini", input="ping", instructions="Be brief.", max_output_tokens=64, temperature=0.5,
        metadata={"feature": "search"}, user="user-7", store=True,
    )
    response = raw.parse()
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "echo: ping"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.instructions == "Be brief." and response.max_output_tokens == 64
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens,
            response.usage.output_tokens, response.usage.output_tokens_details.reasoning_tokens) == (12, 2, 7, 1)

    sent = fakes.router.bodies[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}]
    assert (sent["max_tokens"], sent["temperature"], sent["user"]) == (64, 0.5, "user-7")
    assert "store" not in sent  # nothing is stored here, and the upstream must not store it either
    assert fakes.billing.authorize_calls[-1].max_output_tokens == 64
    _env, event, _key = await usage_event(broker, raw.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.model == "gpt-4o-mini"
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (12, 7)
    assert dict(event.tags) == {"feature": "search", "user": "user-7"}


async def test_a_streamed_response_is_the_real_event_sequence_with_final_usage(
    sdk: openai.AsyncOpenAI, http: httpx2.AsyncClient, broker: str
) -> None:
    async with sdk.responses.stream(model="gpt-4o-mini", input="stream please") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "Hello there!" == final.output_text
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)

    reply = await http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "stream please", "stream": True},
                            headers=auth())
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ") for line in reply.text.splitlines() if line.startswith("event: ")]
    assert events == ["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added", *["response.output_text.delta"] * 4,
                      "response.output_text.done", "response.content_part.done", "response.output_item.done",
                      "response.completed"]
    data = [orjson.loads(line.removeprefix("data: ")) for line in reply.text.splitlines()
            if line.startswith("data: ")]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    _env, event, _key = await usage_event(broker, reply.headers["x-request-id"])
    assert event.streamed and event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED


async def test_function_calls_and_their_outputs_are_translated_onto_chat(
    sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    await sdk.responses.create(
        model="gpt-4o-mini", tools=WEATHER, tool_choice={"type": "function", "name": "weather"},
        parallel_tool_calls=False, text={"format": {"type": "json_schema", "name": "answer", "strict": True,
                                                    "schema": {"type": "object"}}},
        input=[
            {"role": "developer", "content": "Answer in JSON."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"},
                                         {"type": "input_image", "image_url": "https://example.com/a.png",
                                          "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny.",
                                                                  "annotations": []}]},
            {"role": "user", "content": "And tomorrow?"},
        ],
    )
    sent = fakes.router.bodies[-1]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather of a city", "strict": True, "parameters": WEATHER[0]["parameters"]}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object"}, "strict": True}}
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ]


async def test_stateful_and_unsupported_fields_are_refused_before_anything_is_held(
    sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    with pytest.raises(openai.BadRequestError) as stored:
        await sdk.responses.create(model="gpt-4o-mini", input="hi", previous_response_id="resp_123")
    assert stored.value.param == "previous_response_id" and "stores no responses" in stored.value.message
    with pytest.raises(openai.BadRequestError) as conversation:
        await sdk.responses.create(model="gpt-4o-mini", input="hi", conversation="conv_1")
    assert conversation.value.param == "conversation"
    with pytest.raises(openai.BadRequestError) as hosted:
        await sdk.responses.create(model="gpt-4o-mini", input="hi", tools=[{"type": "web_search"}])
    assert hosted.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as reference:
        await sdk.responses.create(model="gpt-4o-mini", input=[{"type": "item_reference", "id": "msg_1"}])
    assert "stores no items" in reference.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        await sdk.responses.create(model="gpt-4o-mini", input="hi", extra_body={"max_tool_calls": 2})
    assert unknown.value.param == "max_tool_calls"
    assert fakes.billing.authorize_calls == []


async def test_a_blocked_prompt_is_a_403_and_billed_as_blocked(
    sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str
) -> None:
    fakes.policy.rules["sk-live-123"] = ("secret", ppb.ACTION_BLOCK)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await sdk.responses.create(model="gpt-4o-mini", input=[
            {"type": "function_call_output", "call_id": "c", "output": "token sk-live-123"}])
    assert denied.value.code == "policy_violation" and "sk-live-123" not in str(denied.value.body)
    assert fakes.policy.inspected[-1] == ["token sk-live-123"]  # tool outputs are inspected too
    _env, event, _key = await usage_event(broker, denied.value.response.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_BLOCKED


async def test_a_stream_that_breaks_ends_with_an_error_event_and_is_billed_once(
    http: httpx2.AsyncClient, fakes: Fakes, broker: str
) -> None:
    fakes.router.fail_after_chunks = 2
    reply = await http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True},
                            headers=auth())
    events = [line.removeprefix("event: ") for line in reply.text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "error" and "response.completed" not in events
    last = orjson.loads(reply.text.strip().splitlines()[-1].removeprefix("data: "))
    assert last["type"] == "error" and last["message"]
    _env, event, _key = await usage_event(broker, reply.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED and event.usage.completion_tokens > 0


# ---- the translation of answers, checked with the SDK's own types and stream accumulator -------------------


def _request(**fields: Any) -> Any:
    return parse_responses_request(orjson.dumps({"model": "m", "input": "hi", **fields}))


def test_a_completion_with_tool_calls_becomes_function_call_items() -> None:
    completion = orjson.dumps({
        "id": "chatcmpl-1", "created": 1_700_000_000, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"A"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": '{"city":"B"}'}},
            ]}}],
    })
    body = response_from_completion(completion, _request(tools=WEATHER), "req_x", Usage(10, 5, 15))
    response = Response.model_validate(orjson.loads(body))
    assert response.output_text == "Checking."
    calls = [o for o in response.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "weather", '{"city":"A"}'), ("call_b", "weather", '{"city":"B"}')]
    assert response.tools[0].type == "function" and response.tools[0].name == "weather"
    assert response.usage is not None and response.usage.total_tokens == 15


def test_a_cut_answer_is_incomplete() -> None:
    completion = orjson.dumps({"choices": [{"index": 0, "finish_reason": "length",
                                            "message": {"role": "assistant", "content": "Hel"}}]})
    response = Response.model_validate(orjson.loads(response_from_completion(completion, _request(), "req_x", None)))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return orjson.dumps({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_streamed_tool_calls_accumulate_in_the_sdk_to_the_same_response() -> None:
    stream = ResponseStream(_request(tools=WEATHER, stream=True), "req_s")
    frames = b"".join([
        stream.chunk(_chunk({"role": "assistant", "content": "Let me"})),
        stream.chunk(_chunk({"content": " check."})),
        stream.chunk(_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                             "function": {"name": "weather", "arguments": ""}}]})),
        stream.chunk(_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                             "function": {"name": "weather", "arguments": '{"city":'}}]})),
        stream.chunk(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"A"}'}}]})),
        stream.chunk(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"B"}'}}]}, "tool_calls")),
        stream.end(Usage(10, 5, 15)),
    ])
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=WEATHER, text_format=openai.omit)
    kinds = []
    for line in frames.decode().splitlines():
        if line.startswith("data: "):
            event = construct_type(type_=ResponseStreamEvent, value=orjson.loads(line.removeprefix("data: ")))
            kinds.append(event.type)
            state.handle_event(event)  # type: ignore[arg-type]
    assert kinds.count("response.function_call_arguments.delta") == 3 and kinds[-1] == "response.completed"
    final = state._completed_response
    assert final is not None and final.output_text == "Let me check."
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [("call_a", '{"city":"A"}'), ("call_b", '{"city":"B"}')]
    assert final.usage is not None and final.usage.output_tokens == 5
