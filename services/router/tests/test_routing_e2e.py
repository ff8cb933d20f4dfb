"""Per-request overrides and policy constraints through the real router against two real mock upstreams
(the ``start`` fixture: model ``m`` on ``primary`` then ``backup``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import MockUpstream

Start = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]


def _request(constraints: pb.RoutingConstraints | None = None, **extra: Any) -> pb.CompleteRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], **extra}
    return pb.CompleteRequest(
        request_id="req_r", account_id="acc_r", model="m", body_json=json.dumps(body).encode(), constraints=constraints
    )


async def test_the_callers_provider_order_wins_and_the_overrides_never_reach_the_upstream(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    reply = await stub.Complete(_request(provider={"order": ["backup"]}, models=["solo"]))
    assert reply.provider == "backup"
    [call] = backup.calls
    assert "provider" not in call["body"] and "models" not in call["body"]
    assert mock.calls == []
    streamed = [m async for m in stub.StreamComplete(_request(provider={"only": ["backup"]}, stream=True))]
    assert streamed[-1].end.provider == "backup"


async def test_allow_fallbacks_false_stops_at_the_chosen_provider(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    mock.faults.arm(FaultRule(fault="500", times=2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_request(provider={"allow_fallbacks": False}))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert backup.calls == []
    # the faults are used up: with the backup ignored, the primary serves again
    reply = await stub.Complete(_request(provider={"ignore": ["backup"]}, models=["solo"]))
    assert reply.provider == "primary"


async def test_policy_constraints_bind_and_the_caller_cannot_loosen_them(
    start: Start, mock: MockUpstream, backup: MockUpstream
) -> None:
    stub = await start()
    no_primary = pb.RoutingConstraints(denied_providers=["primary"])
    reply = await stub.Complete(_request(no_primary, provider={"order": ["primary"]}))
    assert reply.provider == "backup" and mock.calls == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_request(no_primary, provider={"only": ["primary"]}))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_request(pb.RoutingConstraints(allowed_models=["solo"])))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not allowed by policy" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(_request(provider={"sort": "fastest"}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mock.calls == [] and len(backup.calls) == 1
