"""The mock's Anthropic, Gemini and Azure endpoints and its admin-armed faults, as real clients see them.

The official ``anthropic`` SDK parses the mock's Messages answers and streams (proof the wire format is the real
one); the official ``openai`` SDK's Azure client finds the Azure URL scheme; Gemini is read over raw HTTP as
its SSE, since no Google SDK is installed here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from tollgate_dev.mock_upstream import DEFAULT_REPLY, MockUpstream
from tollgate_dev.mock_wire import TOOL_INPUT


def root(mock: MockUpstream) -> str:
    return mock.base_url.removesuffix("/v1")


@pytest.fixture
async def claude(mock: MockUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=root(mock), api_key="sk-ant-test", max_retries=0) as sdk:
        yield sdk


async def post(mock: MockUpstream, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(root(mock) + path, json=body, headers=headers or {}) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text), text
        except ValueError:
            return resp.status, None, text


# ---- Anthropic --------------------------------------------------------------------------------------------------


async def test_anthropic_sdk_reads_a_message_and_its_cache_usage(
    mock: MockUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    mock.cached_tokens = 4
    message = await claude.messages.create(
        model="claude-3-5-haiku", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_REPLY
    assert message.stop_reason == "end_turn"
    [record] = mock.calls
    assert record["format"] == "anthropic" and record["authorization_present"] is True
    assert message.usage.model_dump(include={"input_tokens", "output_tokens", "cache_read_input_tokens"}) == {
        "input_tokens": record["usage"]["input_tokens"],
        "output_tokens": record["usage"]["output_tokens"],
        "cache_read_input_tokens": 4,
    }
    # Anthropic's input_tokens leaves the cache reads out.
    again = await claude.messages.create(
        model="claude-3-5-haiku", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    )
    mock.cached_tokens = 0
    uncached = await claude.messages.create(
        model="claude-3-5-haiku", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    )
    assert uncached.usage.input_tokens == again.usage.input_tokens + 4


async def test_anthropic_sdk_streams_the_event_sequence(mock: MockUpstream, claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="claude-3-5-haiku", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text and DEFAULT_REPLY.startswith(text)
    assert final.stop_reason == "max_tokens"
    [record] = mock.calls
    assert record["stream"] is True
    assert final.usage.output_tokens == record["usage"]["output_tokens"] == 5
    assert final.usage.input_tokens == record["usage"]["input_tokens"]


async def test_anthropic_sdk_gets_a_forced_tool_use(mock: MockUpstream, claude: anthropic.AsyncAnthropic) -> None:
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    message = await claude.messages.create(
        model="claude-3-5-haiku",
        max_tokens=50,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == TOOL_INPUT
    async with claude.messages.stream(
        model="claude-3-5-haiku",
        max_tokens=50,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        final = await stream.get_final_message()
    [block] = final.content
    assert block.type == "tool_use" and block.input == TOOL_INPUT


async def test_anthropic_errors_are_anthropics_own(mock: MockUpstream, claude: anthropic.AsyncAnthropic) -> None:
    status, body, _ = await post(mock, "/_mock/faults", {"fault": "429", "times": 1, "retry_after": 3})
    assert status == 201 and body["times"] == 1
    with pytest.raises(anthropic.RateLimitError) as limited:
        await claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": limited.value.body["error"]["message"]},
    }  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError):
        await claude.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_headers={"X-Mock-Fault": "500"}
        )
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(model="m", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    status, body, _ = await post(mock, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": []})
    assert status == 400 and body["error"]["message"] == "anthropic-version: header is required"
    assert [c["status"] for c in mock.calls] == [429, 500, 400, 400]


async def test_an_anthropic_stream_cut_mid_way_fails_the_sdk_after_text(
    mock: MockUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    received: list[str] = []
    with pytest.raises(Exception, match=r"incomplete|closed|peer") as caught:  # the SDK's transport error
        async with claude.messages.stream(
            model="m",
            max_tokens=50,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Mock-Fault": "disconnect"},
        ) as stream:
            async for piece in stream.text_stream:
                received.append(piece)
    assert "ProtocolError" in type(caught.value).__name__
    assert received and DEFAULT_REPLY.startswith("".join(received)) and "".join(received) != DEFAULT_REPLY
    assert mock.calls[0]["fault"] == "disconnect"


# ---- Gemini -----------------------------------------------------------------------------------------------------

GEMINI_BODY = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
    "generationConfig": {"maxOutputTokens": 6},
}


async def test_gemini_generate_content_reports_usage_with_cache_and_thoughts(mock: MockUpstream) -> None:
    mock.cached_tokens, mock.reasoning_tokens = 2, 5
    status, body, _ = await post(
        mock, "/v1beta/models/gemini-2.0-flash:generateContent", GEMINI_BODY, {"x-goog-api-key": "k"}
    )
    assert status == 200
    [candidate] = body["candidates"]
    assert candidate["content"]["role"] == "model" and candidate["finishReason"] == "MAX_TOKENS"
    usage = body["usageMetadata"]
    assert usage["candidatesTokenCount"] == 6 and usage["thoughtsTokenCount"] == 5
    assert usage["cachedContentTokenCount"] == 2 <= usage["promptTokenCount"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + 6 + 5
    [record] = mock.calls
    assert record["format"] == "gemini" and record["model"] == "gemini-2.0-flash" and record["usage"] == usage
    assert body["responseId"] == record["id"] and record["authorization_present"] is True


async def test_gemini_stream_is_sse_with_usage_so_far(mock: MockUpstream) -> None:
    status, _, text = await post(mock, "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", GEMINI_BODY)
    assert status == 200
    events = [json.loads(line[6:]) for line in text.split("\r\n\r\n") if line.startswith("data: ")]
    assert len(events) >= 2
    assert (
        "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
        == "".join(DEFAULT_REPLY)[: len("".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events))]
    )
    assert [("finishReason" in e["candidates"][0]) for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["usageMetadata"] == mock.calls[0]["usage"]
    counts = [e["usageMetadata"]["candidatesTokenCount"] for e in events]
    assert counts == sorted(counts) and counts[-1] == 6


async def test_gemini_errors_are_googles_own(mock: MockUpstream) -> None:
    await post(mock, "/_mock/faults", {"fault": "429", "format": "gemini", "model": "gemini-2.0-flash"})
    status, body, _ = await post(mock, "/v1beta/models/gemini-2.0-flash:generateContent", GEMINI_BODY)
    assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED" and body["error"]["code"] == 429
    status, body, _ = await post(mock, "/v1beta/models/gemini-2.0-flash:generateContent", {"contents": []})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"


# ---- Azure and the fault admin ----------------------------------------------------------------------------------


async def test_openai_sdk_azure_client_finds_the_deployment_url(mock: MockUpstream) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=root(mock), api_key="azure-key", api_version="2024-10-21", max_retries=0
    ) as azure:
        reply = await azure.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == DEFAULT_REPLY
    [record] = mock.calls
    assert record["format"] == "azure" and record["path"] == "/openai/deployments/my-deployment/chat/completions"
    assert reply.usage is not None and reply.usage.prompt_tokens == record["usage"]["prompt_tokens"]


async def test_armed_faults_match_by_model_and_format_and_are_consumed(mock: MockUpstream) -> None:
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    await post(mock, "/_mock/faults", {"fault": "500", "times": 2, "model": "gpt-4o", "format": "openai"})
    await post(mock, "/_mock/faults", {"latency_ms": 1, "model": "other"})
    async with aiohttp.ClientSession() as http, http.get(root(mock) + "/_mock/faults") as resp:
        assert [r["model"] for r in await resp.json()] == ["gpt-4o", "other"]
    await post(mock, "/_mock/faults", {"fault": "429", "model": "never-called"})
    statuses = [(await post(mock, "/v1/chat/completions", chat))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert (await post(mock, "/v1/chat/completions", {**chat, "model": "gpt-4o-mini"}))[0] == 200
    assert (await post(mock, "/v1/chat/completions", {**chat, "model": "other"}))[0] == 200
    assert [(c["model"], c["fault"], c["latency_ms"]) for c in mock.calls] == [
        ("gpt-4o", "500", 0),
        ("gpt-4o", "500", 0),
        ("gpt-4o", None, 0),
        ("gpt-4o-mini", None, 0),
        ("other", None, 1),
    ]
    status, body, _ = await post(mock, "/_mock/faults", {"fault": "boom"})
    assert status == 400 and "fault must be one of" in body["error"]["message"]
    async with aiohttp.ClientSession() as http, http.delete(root(mock) + "/_mock/faults") as resp:
        assert resp.status == 204
    assert mock.faults.rules() == []


async def test_anthropic_overload_is_529_or_a_mid_stream_error_event(
    mock: MockUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    overloaded = {"X-Mock-Fault": "overloaded"}
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_headers=overloaded
        )
    assert caught.value.status_code == 529
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with claude.messages.stream(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}], extra_headers=overloaded
        ) as stream:
            async for piece in stream.text_stream:
                received.append(piece)
    assert "Overloaded" in str(caught.value) and received
    assert [c["status"] for c in mock.calls] == [529, 200]
