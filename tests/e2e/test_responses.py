"""``POST /v1/responses`` end to end, with the official ``openai`` SDK as the client (what the Agents SDK or a
Codex-style agent runs): through ingress, billing, policy and the router to the mock's OpenAI chat endpoint or
its Anthropic Messages endpoint (a Claude model), charged exactly what the mock reported, once."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, resale_price
from .test_anthropic_messages import served_tokens

pytestmark = pytest.mark.e2e

WEATHER: Any = [{"type": "function", "name": "weather", "description": "The weather in a city", "strict": True,
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                                "additionalProperties": False}}]


@pytest.mark.parametrize(("model", "wire"), [("gpt-4o-mini", "openai"), ("claude-3-5-haiku", "anthropic")])
def test_responses_streaming_and_not_are_served_and_charged_exactly(platform: Platform, model: str, wire: str) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))

    response = client.responses.create(model=model, instructions="Be brief.", input="Hello there.",
                                       max_output_tokens=64)
    assert response.status == "completed" and response.output_text

    with client.responses.stream(model=model, max_output_tokens=64,
                                 input=[{"role": "user", "content": "Stream to me."}]) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text

    served = mock_calls(platform)[before:]
    assert [(c["format"], c["stream"]) for c in served] == [(wire, False), (wire, True)]
    counts = [served_tokens(c) for c in served]
    for reply, (prompt, completion) in zip((response, final), counts, strict=True):
        assert reply.usage is not None
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (prompt, completion)
    expected = sum(resale_price(platform, model, p, c) for p, c in counts)
    assert expected > 0
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_a_function_call_round_trip_through_a_claude_upstream(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))

    first = client.responses.create(model="claude-3-5-haiku", max_output_tokens=64, tools=WEATHER,
                                    tool_choice={"type": "function", "name": "weather"}, input="Weather in Paris?")
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "weather" and call.arguments == '{"city":"Paris"}'

    with client.responses.stream(model="claude-3-5-haiku", max_output_tokens=64, tools=WEATHER,
                                 tool_choice="required", input="Weather in Paris?") as stream:
        streamed = stream.get_final_response()
    streamed_call = next(o for o in streamed.output if o.type == "function_call")
    assert streamed_call.name == "weather" and streamed_call.arguments == '{"city":"Paris"}'

    answer = client.responses.create(
        model="claude-3-5-haiku", max_output_tokens=64, tools=WEATHER,
        input=[{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
    )
    assert answer.output_text

    served = mock_calls(platform)[before:]
    assert len(served) == 3
    # The function's output reached the Claude upstream as Anthropic's tool_result, for the same call.
    last_turn = served[2]["body"]["messages"][-1]
    assert last_turn["content"][0]["type"] == "tool_result" and last_turn["content"][0]["tool_use_id"] == call.call_id
    expected = sum(resale_price(platform, "claude-3-5-haiku", *served_tokens(c)) for c in served)
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_stateful_requests_are_refused_and_cost_nothing(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="gpt-4o-mini", input="Go on.", previous_response_id="resp_abc")
    assert refused.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
    assert len(mock_calls(platform)) == before
    assert tenant.settle()["balance_nanos"] == 10 * NANOS
