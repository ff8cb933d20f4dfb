"""``POST /v1/messages`` end to end, with the official ``anthropic`` SDK as the client (what a coding agent with
``ANTHROPIC_BASE_URL`` runs): through ingress, billing, policy and the router to the mock's Anthropic Messages
endpoint (a Claude model) or its OpenAI endpoint (any other model), charged exactly what the mock reported."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, resale_price
from .test_providers import normalised

pytestmark = pytest.mark.e2e

WEATHER: Any = [{"name": "weather", "description": "The weather in a city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def sdk(platform: Platform, tenant: Tenant) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=platform.ingress_url, api_key=tenant.api_key, max_retries=0, timeout=30)


def served_tokens(record: dict[str, Any]) -> tuple[int, int]:
    if record["format"] == "openai":
        return int(record["usage"]["prompt_tokens"]), int(record["usage"]["completion_tokens"])
    return normalised(record)


@pytest.mark.parametrize(("model", "wire"), [("claude-3-5-haiku", "anthropic"), ("gpt-4o-mini", "openai")])
def test_messages_streaming_and_not_are_served_and_charged_exactly(platform: Platform, model: str, wire: str) -> None:
    tenant = Tenant.create(platform)
    client = sdk(platform, tenant)
    before = len(mock_calls(platform))

    message = client.messages.create(model=model, max_tokens=64, system="Be brief.",
                                     messages=[{"role": "user", "content": "Hello there."}])
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")

    with client.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "Stream to me."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text

    served = mock_calls(platform)[before:]
    assert [(c["format"], c["stream"]) for c in served] == [(wire, False), (wire, True)]
    counts = [served_tokens(c) for c in served]
    # Anthropic's convention on the way out: input excludes cache reads (none here), output as served.
    for reply, (prompt, completion) in zip((message, final), counts, strict=True):
        assert reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0) == prompt
        assert reply.usage.output_tokens == completion
    expected = sum(resale_price(platform, model, p, c) for p, c in counts)
    assert expected > 0
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_tools_round_trip_through_a_claude_upstream(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = sdk(platform, tenant)
    before = len(mock_calls(platform))

    first = client.messages.create(model="claude-3-5-haiku", max_tokens=64, tools=WEATHER,
                                   tool_choice={"type": "tool", "name": "weather"},
                                   messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert (call.name, call.input) == ("weather", {"city": "Paris"})

    with client.messages.stream(model="claude-3-5-haiku", max_tokens=64, tools=WEATHER,
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        streamed = stream.get_final_message()
    streamed_call = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed.stop_reason == "tool_use" and streamed_call.input == {"city": "Paris"}

    answer = client.messages.create(
        model="claude-3-5-haiku", max_tokens=64, tools=WEATHER,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]}],
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"

    served = mock_calls(platform)[before:]
    assert len(served) == 3
    # The tool result reached the Claude upstream as Anthropic's own tool_result block, for the same tool_use id.
    last_turn = served[2]["body"]["messages"][-1]
    assert last_turn["role"] == "user"
    assert last_turn["content"][0]["type"] == "tool_result" and last_turn["content"][0]["tool_use_id"] == call.id
    expected = sum(resale_price(platform, "claude-3-5-haiku", *served_tokens(c)) for c in served)
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_count_tokens_models_and_errors(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = sdk(platform, tenant)
    counted = client.messages.count_tokens(model="claude-3-5-haiku",
                                           messages=[{"role": "user", "content": "Hello there."}])
    assert counted.input_tokens > 0
    models = {m.id for m in client.models.list()}
    assert {"claude-3-5-haiku", "gpt-4o-mini"} <= models

    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["type"] == "error"  # type: ignore[index]

    broke = Tenant.create(platform, credit=None)
    with pytest.raises(anthropic.APIStatusError) as unpaid:
        sdk(platform, broke).messages.create(model="claude-3-5-haiku", max_tokens=8,
                                             messages=[{"role": "user", "content": "x"}])
    assert unpaid.value.status_code == 402
    assert unpaid.value.body["error"]["type"] == "billing_error"  # type: ignore[index]

    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=platform.ingress_url, api_key="tg-nope", max_retries=0).messages.create(
            model="claude-3-5-haiku", max_tokens=8, messages=[{"role": "user", "content": "x"}])
