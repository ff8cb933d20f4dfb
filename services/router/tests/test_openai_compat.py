"""The OpenAI-compatible adapter against providers that differ from the mock in ways real ones do.

A small real HTTP server plays each provider (chosen by the upstream model name); the router runs for real
in front of it, so these are the answers ingress would get.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_reason, retry_after
from tollgate_router.openai_compat import retry_after_seconds

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]

USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 40,
    "total_tokens": 160,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 25},
}


def chunk(content: str | None, *, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    payload = {
        "id": "gen-42",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def provider(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    behaviour = body["model"]
    if behaviour == "usage-in-last-chunk":  # DeepSeek-style: no separate usage-only chunk, no x-request-id
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": OPENROUTER PROCESSING\n\n" + b"event: message\n" + chunk("Hel"))
        await response.write(chunk("lo", finish="stop", usage=USAGE) + b"data: [DONE]\n\n")
        return response
    if behaviour == "no-usage":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk("Hi", finish="stop") + b"data: [DONE]\n\n")
        return response
    if behaviour == "error-mid-stream":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk("Hi") + b'data: {"error": {"message": "overloaded"}}\n\n')
        return response
    if behaviour == "rich-usage":
        reply = {"id": "gen-7", "object": "chat.completion", "choices": [], "usage": USAGE}
        return web.json_response(reply, headers={"x-request-id": "prov-req-9"})
    if behaviour == "no-usage-json":
        return web.json_response({"id": "gen-8", "object": "chat.completion", "choices": []})
    if behaviour == "html":
        return web.Response(text="<html>gateway</html>", content_type="text/html")
    if behaviour == "slow-down":
        return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"retry-after-ms": "2500"})
    if behaviour == "unprocessable":
        return web.json_response({"detail": "field temperature: must be <= 2"}, status=422)
    if behaviour == "overloaded":
        return web.json_response({"error": {"message": "overloaded"}}, status=503)
    raise AssertionError(behaviour)


@pytest.fixture
async def fake_provider() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", provider)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


@pytest.fixture
async def stub(tmp_path: Path, fake_provider: str, start_router: StartRouter) -> pb_grpc.RouterServiceStub:
    models = [
        "usage-in-last-chunk",
        "no-usage",
        "error-mid-stream",
        "rich-usage",
        "no-usage-json",
        "html",
        "slow-down",
        "unprocessable",
        "overloaded",
    ]
    path = tmp_path / "providers.yaml"
    path.write_text(
        json.dumps(
            {
                "providers": {"fake": {"kind": "openai", "base_url": fake_provider}},
                "models": {m: {"provider": "fake"} for m in models},
            }
        )
    )
    return await start_router(ROUTER_PROVIDERS_FILE=str(path))


def call(model: str) -> pb.CompleteRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return pb.CompleteRequest(model=model, body_json=json.dumps(body).encode())


async def stream(stub: pb_grpc.RouterServiceStub, model: str) -> list[pb.StreamCompleteResponse]:
    return [message async for message in stub.StreamComplete(call(model))]


async def test_usage_inside_the_last_content_chunk_is_moved_to_the_end(stub: pb_grpc.RouterServiceStub) -> None:
    messages = await stream(stub, "usage-in-last-chunk")
    chunks = [json.loads(m.chunk_json) for m in messages[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hel", "lo"]
    assert all("usage" not in c for c in chunks)
    end = messages[-1].end
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.total_tokens) == (120, 40, 160)
    assert (end.usage.cached_prompt_tokens, end.usage.reasoning_tokens) == (100, 25)
    assert end.upstream_request_id == "gen-42", "without x-request-id the chunk id names the upstream call"


async def test_a_stream_without_usage_fails_rather_than_bill_nothing(stub: pb_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(stub, "no-usage")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "without reporting usage" in (caught.value.details() or "")


async def test_an_error_event_mid_stream_fails_the_stream(stub: pb_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(stub, "error-mid-stream")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "overloaded" in (caught.value.details() or "")


async def test_cached_and_reasoning_tokens_and_the_request_id_header(stub: pb_grpc.RouterServiceStub) -> None:
    reply = await stub.Complete(call("rich-usage"))
    assert (reply.usage.cached_prompt_tokens, reply.usage.reasoning_tokens) == (100, 25)
    assert reply.upstream_request_id == "prov-req-9"


@pytest.mark.parametrize("model", ["no-usage-json", "html", "overloaded"])
async def test_unusable_answers_are_unavailable(stub: pb_grpc.RouterServiceStub, model: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(call(model))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "upstream_error"


async def test_retry_after_ms_is_rounded_up_to_whole_seconds(stub: pb_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(call("slow-down"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_after(caught.value) == 3


async def test_422_is_invalid_argument_with_the_providers_detail(stub: pb_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(call("unprocessable"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "field temperature: must be <= 2"


def test_retry_after_forms() -> None:
    now = time.time()
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after": "0.2"}) == 1
    assert retry_after_seconds({"retry-after": formatdate(now + 30, usegmt=True)}, now=now) in (30, 31)
    assert retry_after_seconds({"retry-after": "soon"}) == 1
    assert retry_after_seconds({}) == 1


def test_openrouter_reasoning_fields_reach_only_a_provider_that_speaks_them() -> None:
    from tollgate_router.domain import Provider, Route
    from tollgate_router.errors import InvalidRequest
    from tollgate_router.openai_compat import without_foreign_reasoning

    openai_route = Route("gpt-4o", Provider("openai", "openai", "http://o/v1"), "gpt-4o", "openai")
    openrouter = Route("claude", Provider("or", "openai", "http://or/v1", options={"reasoning": "openrouter"}),
                       "anthropic/claude", "anthropic")
    history = {"messages": [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "x", "reasoning_details": [{"type": "reasoning.text"}]}]}
    assert without_foreign_reasoning(openai_route, history)["messages"][1] == {"role": "assistant", "content": "x"}
    assert "reasoning_details" in history["messages"][1], "the caller's body is not mutated"
    assert without_foreign_reasoning(openrouter, history) is history
    with pytest.raises(InvalidRequest) as caught:
        without_foreign_reasoning(openai_route, {**history, "reasoning": {"max_tokens": 2048}})
    assert caught.value.param == "reasoning"
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    assert without_foreign_reasoning(openai_route, plain) is plain
