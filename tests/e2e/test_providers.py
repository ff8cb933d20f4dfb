"""Anthropic and Gemini upstreams end to end: the official ``openai`` SDK in front, each provider's wire format behind.

A request for the Claude (or Gemini) demo model goes through ingress and the router to the mock's Anthropic
Messages (or Gemini generateContent) endpoint; the caller gets OpenAI-format answers and is charged exactly the
resale price of the usage the mock reported, normalised to OpenAI's convention.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, resale_price

pytestmark = pytest.mark.e2e


def normalised(record: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) in OpenAI's convention from the usage the mock reported in the record's format."""
    usage = record["usage"]
    if record["format"] == "anthropic":
        prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
        return prompt, usage["output_tokens"]
    assert record["format"] == "gemini"
    return usage["promptTokenCount"], usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)


@pytest.mark.parametrize(("model", "wire"), [("claude-3-5-haiku", "anthropic"), ("gemini-2.0-flash", "gemini")])
def test_a_provider_model_answers_in_openai_format_and_is_charged(platform: Platform, model: str, wire: str) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))

    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there."}],
        max_tokens=40,
    )
    assert reply.object == "chat.completion" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Stream to me."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    served = mock_calls(platform)[before:]
    assert [(c["format"], c["stream"]) for c in served] == [(wire, False), (wire, True)]
    counts = [normalised(c) for c in served]
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == counts[0]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == counts[1]
    expected = sum(resale_price(platform, model, prompt, completion) for prompt, completion in counts)
    assert expected > 0
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_reasoning_effort_reaches_gemini_as_a_thinking_budget_and_an_unknown_one_is_a_400(
    platform: Platform,
) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    reply = client.chat.completions.create(model="gemini-2.0-flash", reasoning_effort="low", max_tokens=40,
                                           messages=[{"role": "user", "content": "Think a little."}])
    (served,) = mock_calls(platform)[before:]
    assert served["body"]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024}
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == normalised(served)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gemini-2.0-flash", reasoning_effort="extreme",  # type: ignore[arg-type]
                                       messages=[{"role": "user", "content": "Think a lot."}])
    assert refused.value.status_code == 400 and "reasoning_effort" in str(refused.value)
    assert len(mock_calls(platform)) == before + 1  # refused before any upstream call
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - resale_price(platform, "gemini-2.0-flash",
                                                                         *normalised(served))
