"""What a provider's answer cannot do to the router: be read without bound, carry counts no column holds, carry an
id metering cannot store, or leave an attempt recorded as if it cost nothing.

A small real HTTP server plays the provider (its behaviour chosen by the upstream model name); the router runs for
real in front of it, and each attempt is read back from the router's outbox as ``AttemptRecorded``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from tollgate.events.v1 import attempts_pb2 as apb
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import MockUpstream

from .conftest import StartRouter

LIMIT = 64 * 1024
HUGE = 2**63  # one past the largest int64
LONG_ID = "req-" + "x" * 296


def _reply(usage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": "Hi"}
    return {
        "id": "gen-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message}],
        "usage": usage,
        **extra,
    }


def _chunk(**extra: Any) -> bytes:
    payload = {"id": "gen-2", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    return b"data: " + json.dumps({**payload, **extra}).encode() + b"\n\n"


async def _provider(request: web.Request) -> web.StreamResponse:
    behaviour = (await request.json())["model"]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if behaviour == "big-body":
        return web.json_response(_reply(usage, padding="p" * (2 * LIMIT)))
    if behaviour == "big-chunked":  # no Content-Length: the size is only known while reading
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b" " * 1024)
        await response.write(json.dumps(_reply(usage)).encode())
        return response
    if behaviour == "gzip-bomb":  # a few kB on the wire, 4 MB once inflated
        raw = json.dumps(_reply(usage, padding="p" * (4 * 2**20))).encode()
        return web.Response(
            body=gzip.compress(raw), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )
    if behaviour == "huge-usage":
        return web.json_response(_reply({"prompt_tokens": HUGE, "completion_tokens": 7}))
    if behaviour == "negative-usage":
        return web.json_response(_reply({"prompt_tokens": 4, "completion_tokens": -1, "total_tokens": 3}))
    if behaviour == "long-id":
        return web.json_response(_reply(usage), headers={"x-request-id": LONG_ID})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": LONG_ID})
    await response.prepare(request)
    if behaviour == "stream-big-event":
        await response.write(_chunk())
        await response.write(b'data: {"choices": [], "padding": "')
        for _ in range(200):  # a line that never ends, 1 kB at a time
            await response.write(b"p" * 1024)
    elif behaviour == "stream-huge-usage":
        await response.write(_chunk() + _chunk(choices=[], usage={"prompt_tokens": 5, "completion_tokens": HUGE}))
        await response.write(b"data: [DONE]\n\n")
    elif behaviour == "stream-long-id":
        await response.write(_chunk() + _chunk(choices=[], usage=usage) + b"data: [DONE]\n\n")
    else:
        raise AssertionError(behaviour)
    return response


MODELS = [
    "big-body",
    "big-chunked",
    "gzip-bomb",
    "huge-usage",
    "negative-usage",
    "long-id",
    "stream-big-event",
    "stream-huge-usage",
    "stream-long-id",
]


@pytest.fixture
async def provider_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _provider)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


@pytest.fixture
async def stub(tmp_path: Path, provider_url: str, start_router: StartRouter) -> pb_grpc.RouterServiceStub:
    path = tmp_path / "providers.yaml"
    path.write_text(
        json.dumps(
            {
                "providers": {"fake": {"kind": "openai", "base_url": provider_url}},
                "models": {m: {"provider": "fake"} for m in MODELS},
            }
        )
    )
    return await start_router(
        ROUTER_PROVIDERS_FILE=str(path),
        ROUTER_MAX_RESPONSE_BYTES=str(LIMIT),
        ROUTER_MAX_STREAM_EVENT_BYTES=str(LIMIT),
        ROUTER_RETRIES_PER_DEPLOYMENT="0",
    )


def _call(model: str) -> pb.CompleteRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return pb.CompleteRequest(
        request_id=f"req-{model}", account_id="acc", model=model, body_json=json.dumps(body).encode()
    )


def _attempts(tmp_path: Path) -> list[apb.AttemptRecorded]:
    with sqlite3.connect(tmp_path / "router-0.db") as conn:
        rows = conn.execute("SELECT value FROM outbox ORDER BY id").fetchall()
    return [apb.AttemptRecorded.FromString(value) for (value,) in rows]


@pytest.mark.parametrize("model", ["big-body", "big-chunked", "gzip-bomb"])
async def test_an_answer_beyond_the_limit_is_an_upstream_error_with_unknown_usage(
    stub: pb_grpc.RouterServiceStub, tmp_path: Path, model: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_call(model))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"larger than the gateway accepts ({LIMIT} bytes)" in (caught.value.details() or "")
    [attempt] = _attempts(tmp_path)
    assert attempt.outcome == apb.ATTEMPT_OUTCOME_UPSTREAM_ERROR
    assert attempt.http_status == 200, "the provider answered (and may bill it)"
    assert attempt.usage_unknown


async def test_a_stream_event_beyond_the_limit_ends_the_stream_with_unknown_usage(
    stub: pb_grpc.RouterServiceStub, tmp_path: Path
) -> None:
    received: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stub.StreamComplete(_call("stream-big-event")):
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "a stream event larger than the gateway accepts" in (caught.value.details() or "")
    assert [m.WhichOneof("event") for m in received] == ["chunk_json"]
    [attempt] = _attempts(tmp_path)
    assert (attempt.http_status, attempt.usage_unknown) == (200, True)


async def test_usage_beyond_int64_is_a_clear_upstream_error_and_the_valid_counts_are_kept(
    stub: pb_grpc.RouterServiceStub, tmp_path: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_call("huge-usage"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # not INTERNAL: a known upstream fault
    assert f"invalid usage.prompt_tokens: {HUGE}" in (caught.value.details() or "")
    [attempt] = _attempts(tmp_path)
    assert attempt.usage_unknown
    assert (attempt.usage.prompt_tokens, attempt.usage.completion_tokens) == (0, 7)


async def test_negative_usage_keeps_the_valid_counts(stub: pb_grpc.RouterServiceStub, tmp_path: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_call("negative-usage"))
    assert "invalid usage.completion_tokens: -1" in (caught.value.details() or "")
    [attempt] = _attempts(tmp_path)
    assert (attempt.usage.prompt_tokens, attempt.usage.total_tokens, attempt.usage_unknown) == (4, 3, True)


async def test_streamed_usage_beyond_int64_is_a_clear_upstream_error(
    stub: pb_grpc.RouterServiceStub, tmp_path: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamComplete(_call("stream-huge-usage")):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "invalid usage.completion_tokens" in (caught.value.details() or "")
    [attempt] = _attempts(tmp_path)
    assert (attempt.usage.prompt_tokens, attempt.usage_unknown) == (5, True)


async def test_a_long_upstream_request_id_is_cut_to_what_metering_stores(
    stub: pb_grpc.RouterServiceStub, tmp_path: Path
) -> None:
    reply = await stub.Complete(_call("long-id"))
    assert reply.upstream_request_id == LONG_ID[:200]
    end = [m async for m in stub.StreamComplete(_call("stream-long-id"))][-1].end
    assert end.upstream_request_id == LONG_ID[:200]
    assert [a.upstream_request_id for a in _attempts(tmp_path)] == [LONG_ID[:200]] * 2
    assert not any(a.usage_unknown for a in _attempts(tmp_path))


async def test_a_timed_out_attempt_is_recorded_with_unknown_usage(
    start_router: StartRouter, mock: MockUpstream, tmp_path: Path
) -> None:
    stub = await start_router(ROUTER_UPSTREAM_TIMEOUT_SECONDS="0.3", ROUTER_RETRIES_PER_DEPLOYMENT="0")
    mock.faults.arm(FaultRule(fault="timeout", times=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_call("gpt-4o-mini"))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [attempt] = _attempts(tmp_path)
    assert (attempt.outcome, attempt.http_status, attempt.usage_unknown) == (apb.ATTEMPT_OUTCOME_TIMEOUT, 0, True)


async def test_an_answered_error_status_is_recorded_with_known_usage(
    start_router: StartRouter, mock: MockUpstream, tmp_path: Path
) -> None:
    stub = await start_router(ROUTER_RETRIES_PER_DEPLOYMENT="0")
    mock.faults.arm(FaultRule(fault="500", times=1))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Complete(_call("gpt-4o-mini"))
    [attempt] = _attempts(tmp_path)
    assert (attempt.http_status, attempt.usage_unknown) == (500, False), "a 500 is not billed"


async def test_a_callers_short_deadlines_do_not_open_the_breaker_for_everyone(
    start_router: StartRouter, mock: MockUpstream, tmp_path: Path
) -> None:
    """One tenant calls with a 0.3 s deadline against a provider that takes longer: its attempts time out, but the
    deployment did nothing wrong (its own timeout is 60 s), so the next caller is served, not refused with
    "circuit open"."""
    stub = await start_router(ROUTER_RETRIES_PER_DEPLOYMENT="0", ROUTER_BREAKER_FAILURE_THRESHOLD="2")
    mock.faults.arm(FaultRule(fault="timeout", times=4))
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Complete(_call("gpt-4o-mini"), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.1)
    reply = await stub.Complete(_call("gpt-4o-mini"), timeout=30)
    assert reply.provider == "mock"
    timeouts = [a for a in _attempts(tmp_path) if a.outcome != apb.ATTEMPT_OUTCOME_SUCCEEDED]
    assert len(timeouts) == 4 and all(a.usage_unknown for a in timeouts)


async def test_the_deployments_own_timeouts_still_open_its_breaker(
    start_router: StartRouter, mock: MockUpstream
) -> None:
    stub = await start_router(
        ROUTER_RETRIES_PER_DEPLOYMENT="0", ROUTER_BREAKER_FAILURE_THRESHOLD="2", ROUTER_UPSTREAM_TIMEOUT_SECONDS="0.3"
    )
    mock.faults.arm(FaultRule(fault="timeout", times=2))
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(_call("gpt-4o-mini"), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_call("gpt-4o-mini"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit open" in (caught.value.details() or "")
