"""Retries, fallback, breakers and deadlines through the real router process against two real mock upstreams.

Two deployments of one public model: ``primary`` (priority 0) on one mock and ``backup`` (priority 1) on a
second mock process, so a fault armed on the first (``POST /_mock/faults``'s rules, via ``mock.faults``) shows
exactly which deployment each attempt reached, in each mock's own record of calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import MockUpstream

Start = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]  # the ``start`` fixture of conftest.py


def _request(model: str = "m", **extra: Any) -> pb.CompleteRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}
    return pb.CompleteRequest(request_id="req_1", account_id="acc_1", model=model, body_json=json.dumps(body).encode())


def _statuses(upstream: MockUpstream) -> list[int | None]:
    return [call["status"] for call in upstream.calls]


async def test_a_failing_deployment_is_retried_then_the_request_falls_back(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    mock.faults.arm(FaultRule(fault="500", times=2))
    reply = await stub.Complete(_request())
    assert reply.provider == "backup" and reply.usage.total_tokens > 0
    assert _statuses(mock) == [500, 500]  # first try, one retry (ROUTER_RETRIES_PER_DEPLOYMENT=1)
    assert _statuses(backup) == [200]


async def test_a_rate_limited_call_is_retried_after_its_retry_after(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    mock.faults.arm(FaultRule(fault="429", times=1, retry_after=1))
    reply = await stub.Complete(_request("solo"))
    assert reply.provider == "primary"
    assert _statuses(mock) == [429, 200]
    first, second = (call["received_at"] for call in mock.calls)
    gap = _seconds(second) - _seconds(first)
    assert gap >= 0.99  # waited for Retry-After: 1 (a lower bound, not a speed claim)


async def test_a_retry_after_beyond_the_deadline_falls_back_at_once(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    mock.faults.arm(FaultRule(fault="429", times=5, retry_after=30))
    reply = await stub.Complete(_request(), timeout=10)
    assert reply.provider == "backup"
    assert _statuses(mock) == [429] and _statuses(backup) == [200]
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # nowhere else to go: the 429 itself, with its Retry-After
        await stub.Complete(_request("solo"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _trailer(caught.value, "retry-after") == "30"


async def test_the_breaker_opens_skips_the_deployment_and_recovers_by_itself(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start(
        ROUTER_RETRIES_PER_DEPLOYMENT="0",
        ROUTER_BREAKER_FAILURE_THRESHOLD="2",
        ROUTER_BREAKER_COOLDOWN_SECONDS="0.5",
    )
    mock.faults.arm(FaultRule(fault="500", times=2))
    for _ in range(2):
        assert (await stub.Complete(_request())).provider == "backup"
    assert _statuses(mock) == [500, 500]  # two consecutive failures: open
    for _ in range(3):
        assert (await stub.Complete(_request())).provider == "backup"
    assert len(mock.calls) == 2  # skipped while open
    await asyncio.sleep(0.6)  # the cool-down: half-open, one probe goes through and succeeds
    assert (await stub.Complete(_request())).provider == "primary"
    assert (await stub.Complete(_request())).provider == "primary"  # closed again
    assert _statuses(mock) == [500, 500, 200, 200]


async def test_the_request_deadline_ends_a_hanging_call_with_deadline_exceeded(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start(ROUTER_REQUEST_TIMEOUT_SECONDS="0.5")
    mock.faults.arm(FaultRule(fault="timeout", times=1))  # the mock would sleep 30 s
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_request(), timeout=20)  # the router's own deadline, not the caller's, ends it
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _trailer(caught.value, "tollgate-reason") == "upstream_timeout"
    assert backup.calls == []  # no time left for a fallback
    for _ in range(50):  # the upstream call was closed, not left running
        if _statuses(mock) == [499]:
            break
        await asyncio.sleep(0.02)
    assert _statuses(mock) == [499]


async def test_a_stream_falls_back_before_its_first_chunk_but_never_after(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    mock.faults.arm(FaultRule(fault="500", times=2))
    messages = [m async for m in stub.StreamComplete(_request(stream=True))]
    assert messages[-1].end.provider == "backup" and messages[-1].end.usage.total_tokens > 0
    mock.clear()
    backup.clear()

    mock.faults.arm(FaultRule(fault="disconnect", times=1))  # cut after the first chunk
    chunks: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stub.StreamComplete(_request(stream=True)):
            chunks.append(message.chunk_json)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(chunks) >= 1  # the caller had output, so no retry and no fallback
    assert len(mock.calls) == 1 and backup.calls == []


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    for name, value in error.trailing_metadata() or ():
        if name == key:
            return str(value)
    return None


async def test_active_probes_close_a_recovered_breaker_without_live_traffic(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start(
        ROUTER_RETRIES_PER_DEPLOYMENT="0",
        ROUTER_BREAKER_FAILURE_THRESHOLD="1",
        ROUTER_BREAKER_COOLDOWN_SECONDS="0.2",
        ROUTER_PROBE_INTERVAL_SECONDS="0.1",
    )
    mock.faults.arm(FaultRule(fault="500", times=1))
    assert (await stub.Complete(_request())).provider == "backup"  # primary failed once: open
    # No request from us: only the router's probes reach the primary mock now, a round every 0.1 s to each
    # deployment that is closed (``solo``) or due for its half-open probe (``m`` once its 0.2 s cool-down passed).
    for _ in range(200):
        if _statuses(mock).count(200) >= 5:
            break
        await asyncio.sleep(0.05)
    probes = [call for call in mock.calls if call["status"] == 200]
    assert probes and probes[0]["body"]["max_tokens"] == 1
    assert (await stub.Complete(_request())).provider == "primary"  # the probe closed the breaker
