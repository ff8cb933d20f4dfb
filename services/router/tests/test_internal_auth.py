"""The router serves only ingress: before caller tokens anyone on the pod network could use it as an unbilled proxy
on the operator's provider keys."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.internal_auth import CALLER_KEY, mint_token
from tollgate_dev.mock_upstream import MockUpstream

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]
SECRET = "router-test-internal-secret-0123456789"


def request() -> pb.CompleteRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "free tokens please"}]}
    return pb.CompleteRequest(request_id="req_auth", account_id="acc", model="gpt-4o-mini",
                              body_json=json.dumps(body).encode())


def as_(service: str) -> tuple[tuple[str, str], ...]:
    return ((CALLER_KEY, mint_token(SECRET, service)),)


async def test_no_token_no_upstream_call(start_router: StartRouter, mock: MockUpstream) -> None:
    stub = await start_router(TOLLGATE_INTERNAL_SECRET=SECRET)
    before = len(mock.calls)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(request())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.StreamComplete(request()):
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(request(), metadata=as_("billing"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(mock.calls) == before  # the provider was never asked


async def test_ingress_is_served(start_router: StartRouter, mock: MockUpstream) -> None:
    stub = await start_router(TOLLGATE_INTERNAL_SECRET=SECRET)
    reply = await stub.Complete(request(), metadata=as_("ingress"))
    assert reply.usage.completion_tokens > 0
    chunks = [m async for m in stub.StreamComplete(request(), metadata=as_("ingress"))]
    assert chunks[-1].HasField("end")
    models = await stub.ListModels(pb.ListModelsRequest(), metadata=as_("ingress"))
    assert models.models
