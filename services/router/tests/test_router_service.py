"""RouterService over real gRPC in front of the real mock upstream: what ingress, and so a client, sees.

The mock's record of what it served is the ground truth: the usage the router reports must equal it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_param, error_reason, retry_after, usage_unknown
from tollgate_dev.mock_upstream import DEFAULT_REPLY, MockUpstream
from tollgate_dev.ports import free_port
from tollgate_router.config import Settings
from tollgate_router.server import RouterServer

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, router"}]


def request(model: str = "gpt-4o-mini", **fields: Any) -> pb.CompleteRequest:
    body = {"model": model, "messages": HELLO, **fields}
    return pb.CompleteRequest(
        request_id="req_test", account_id="acc_test", model=model, body_json=json.dumps(body).encode()
    )


def record_for(mock: MockUpstream, upstream_request_id: str) -> dict[str, Any]:
    [record] = [c for c in mock.calls if c["id"] == upstream_request_id]
    return record


def assert_usage_equals(usage: pb.Usage, recorded: dict[str, Any]) -> None:
    assert usage.prompt_tokens == recorded["prompt_tokens"] > 0
    assert usage.completion_tokens == recorded["completion_tokens"] > 0
    assert usage.total_tokens == recorded["total_tokens"]
    assert usage.cached_prompt_tokens == recorded["prompt_tokens_details"]["cached_tokens"]
    assert usage.reasoning_tokens == recorded["completion_tokens_details"]["reasoning_tokens"]


async def collect(call: Any) -> tuple[list[dict[str, Any]], pb.StreamEnd | None]:
    chunks: list[dict[str, Any]] = []
    end = None
    while (message := await call.read()) is not grpc.aio.EOF:
        assert end is None, "nothing may follow the end message"
        if message.WhichOneof("event") == "chunk_json":
            chunks.append(json.loads(message.chunk_json))
        else:
            end = message.end
    return chunks, end


# ---- Complete ---------------------------------------------------------------------------------------------------


async def test_the_served_catalogue_model_is_reported_and_stays_within_the_authorized_models(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    fallback = {"models": ["gpt-4o"], "provider": {"only": ["gpt-4o/mock"]}}
    reply = await stub.Complete(request(**fallback))
    assert (reply.model, reply.upstream_model) == ("gpt-4o", "gpt-4o")
    call = stub.StreamComplete(request(**fallback, stream=True))
    _chunks, end = await collect(call)
    assert end is not None and end.model == "gpt-4o"
    calls = len(mock.calls)
    limited = request(**fallback)
    limited.authorized_models.append("gpt-4o-mini")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Complete(limited)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(mock.calls) == calls, "a model outside the hold must never reach the upstream"
    plain = request()
    plain.authorized_models.extend(["gpt-4o-mini", "gpt-4o"])
    assert (await stub.Complete(plain)).model == "gpt-4o-mini"


async def test_complete_returns_the_upstream_body_and_the_usage_the_mock_recorded(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    reply = await stub.Complete(request(temperature=0.2, max_tokens=50))

    body = json.loads(reply.body_json)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert reply.provider == "mock" and reply.upstream_model == "gpt-4o-mini"
    record = record_for(mock, reply.upstream_request_id)
    assert_usage_equals(reply.usage, record["usage"])
    assert body["usage"]["prompt_tokens"] == reply.usage.prompt_tokens
    # Every field of the request crossed unchanged.
    assert record["body"] == {"model": "gpt-4o-mini", "messages": HELLO, "temperature": 0.2, "max_tokens": 50}


async def test_complete_sends_the_upstream_model_name_and_the_operator_key(
    tmp_path: Path, mock: MockUpstream, start_router: StartRouter
) -> None:
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
providers:
  house: {{kind: openai, base_url: "{mock.base_url}", api_key_env: HOUSE_KEY}}
models:
  house-model: {{provider: house, upstream_model: gpt-4o-2024-08-06, owned_by: tollgate}}
"""
    )
    stub = await start_router(ROUTER_PROVIDERS_FILE=str(providers), HOUSE_KEY="sk-house-secret")
    reply = await stub.Complete(request("house-model"))

    assert reply.provider == "house" and reply.upstream_model == "gpt-4o-2024-08-06"
    record = record_for(mock, reply.upstream_request_id)
    assert record["model"] == "gpt-4o-2024-08-06"
    assert record["authorization_present"] is True
    models = await stub.ListModels(pb.ListModelsRequest())
    assert [(m.id, m.provider, m.owned_by) for m in models.models] == [("house-model", "house", "tollgate")]


async def test_complete_ignores_a_stream_flag_in_the_body(stub: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    reply = await stub.Complete(request(stream=True))
    assert json.loads(reply.body_json)["object"] == "chat.completion"
    assert "stream" not in record_for(mock, reply.upstream_request_id)["body"]


async def test_concurrent_calls_each_get_their_own_exact_usage(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    async def one(i: int) -> pb.CompleteResponse:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * i}], "max_tokens": 1 + i % 7}
        return await stub.Complete(pb.CompleteRequest(model="gpt-4o", body_json=json.dumps(body).encode()))

    replies = await asyncio.gather(*(one(i) for i in range(40)))
    for i, reply in enumerate(replies):
        assert_usage_equals(reply.usage, record_for(mock, reply.upstream_request_id)["usage"])
        assert reply.usage.completion_tokens == 1 + i % 7
    assert len({r.usage.prompt_tokens for r in replies}) == 40


# ---- StreamComplete ---------------------------------------------------------------------------------------------


async def test_stream_yields_chunks_then_an_end_with_the_recorded_usage(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    chunks, end = await collect(stub.StreamComplete(request()))

    assert chunks and end is not None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"].startswith("chatcmpl-") and chunk["choices"]
        assert "usage" not in chunk
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert end.provider == "mock" and end.upstream_model == "gpt-4o-mini"
    record = record_for(mock, end.upstream_request_id)
    assert_usage_equals(end.usage, record["usage"])
    # The router asked for usage even though the caller did not.
    assert record["body"]["stream"] is True
    assert record["body"]["stream_options"] == {"include_usage": True}


async def test_stream_keeps_the_callers_stream_options_and_truncation(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    chunks, end = await collect(
        stub.StreamComplete(
            request(stream_options={"include_usage": False, "include_obfuscation": False}, max_tokens=3)
        )
    )
    assert end is not None and end.usage.completion_tokens == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    options = record_for(mock, end.upstream_request_id)["body"]["stream_options"]
    assert options == {"include_usage": True, "include_obfuscation": False}


# ---- errors -----------------------------------------------------------------------------------------------------


async def test_unknown_model_is_not_found_and_never_reaches_the_upstream(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    for call in (stub.Complete(request("gpt-17")), collect(stub.StreamComplete(request("gpt-17")))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == "model_not_found"
        assert "gpt-17" in (caught.value.details() or "")
    assert mock.calls == []


async def test_body_that_is_not_a_json_object_is_invalid_argument(stub: pb_grpc.RouterServiceStub) -> None:
    for body in (b"{not json", b"[1, 2]"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Complete(pb.CompleteRequest(model="gpt-4o", body_json=body))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_upstream_400_is_invalid_argument_with_the_upstream_message(stub: pb_grpc.RouterServiceStub) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": []}).encode()
    for call in (
        stub.Complete(pb.CompleteRequest(model="gpt-4o", body_json=body)),
        collect(stub.StreamComplete(pb.CompleteRequest(model="gpt-4o", body_json=body))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "messages" in (caught.value.details() or "")


async def test_upstream_400_keeps_the_providers_param_and_code(stub: pb_grpc.RouterServiceStub) -> None:
    """OpenAI's 400 names the field at fault (``param``); the caller's SDK reads it from the error body."""
    for call in (
        stub.Complete(request(max_tokens=20_000)),
        collect(stub.StreamComplete(request(max_tokens=20_000, stream=True))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_tokens is too large: 20000" in (caught.value.details() or "")
        assert error_param(caught.value) == "max_tokens"
        assert error_reason(caught.value) == "invalid_request"  # the provider gave no code (null)


async def test_upstream_500_is_unavailable_before_any_chunk(stub: pb_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(mock_fault="500"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "upstream_error"

    received: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stub.StreamComplete(request(mock_fault="500")):
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert received == [], "an error before the first chunk must be the call's status, not a half stream"


async def test_upstream_429_is_resource_exhausted_with_retry_after(stub: pb_grpc.RouterServiceStub) -> None:
    for call in (stub.Complete(request(mock_fault="429")), collect(stub.StreamComplete(request(mock_fault="429")))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(caught.value) == "upstream_rate_limited"
        assert retry_after(caught.value) == 1


async def test_upstream_401_is_an_operator_problem_not_the_callers(stub: pb_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request(mock_fault="401"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "upstream_auth"
    assert not usage_unknown(caught.value)  # refused with an error status: nothing to bill
    # The upstream's own text (which, at OpenAI, quotes part of the key) is not passed on.
    assert "Incorrect API key" not in (caught.value.details() or "")


async def test_upstream_timeout_is_deadline_exceeded(start_router: StartRouter) -> None:
    stub = await start_router(ROUTER_UPSTREAM_TIMEOUT_SECONDS="0.3")
    for call in (
        stub.Complete(request(mock_fault="timeout")),
        collect(stub.StreamComplete(request(mock_fault="timeout"))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_reason(caught.value) == "upstream_timeout"
        # The request was sent and no answer came: the provider may bill it, and ingress is told so.
        assert usage_unknown(caught.value)


async def test_a_stream_cut_mid_way_fails_after_the_chunks_already_sent(stub: pb_grpc.RouterServiceStub) -> None:
    received: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stub.StreamComplete(request(mock_fault="disconnect")):
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [m.WhichOneof("event") for m in received] == ["chunk_json"]


async def test_unreachable_upstream_is_unavailable(start_router: StartRouter) -> None:
    stub = await start_router(ROUTER_MOCK_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(request())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "upstream_error"


# ---- catalogue and lifecycle --------------------------------------------------------------------------------------


async def test_list_models_is_the_demo_catalogue_on_the_mock(stub: pb_grpc.RouterServiceStub) -> None:
    reply = await stub.ListModels(pb.ListModelsRequest())
    assert {m.id for m in reply.models} == {
        "gpt-4o-mini",
        "gpt-4o",
        "deepseek-chat",
        "claude-3-5-haiku",
        "gemini-2.0-flash",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "gemini-embedding-001",
    }
    assert all(m.provider.startswith("mock") and list(m.providers) == [m.provider] for m in reply.models)
    assert {m.currency for m in reply.models} == {"USD"}


async def test_stop_drains_a_stream_in_flight_and_refuses_new_calls(mock: MockUpstream, tmp_path: Path) -> None:
    environ = {"ROUTER_MOCK_BASE_URL": mock.base_url, "ROUTER_GRPC_PORT": "0"}
    server = RouterServer(Settings.from_env({**environ, "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        call = stub.StreamComplete(request(mock_chunk_delay_ms=100))
        first = await call.read()  # the stream is under way
        assert first.WhichOneof("event") == "chunk_json"
        stopping = asyncio.create_task(server.stop(grace=10))
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(request(), timeout=2)
        chunks, end = await collect(call)
        assert chunks and end is not None, "the in-flight stream must finish with its usage"
        assert_usage_equals(end.usage, record_for(mock, end.upstream_request_id)["usage"])
        await stopping


async def test_a_caller_that_cancels_a_stream_stops_the_upstream_call(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    call = stub.StreamComplete(request(mock_chunk_delay_ms=200))
    first = await call.read()
    assert first.WhichOneof("event") == "chunk_json"
    call.cancel()
    for _ in range(200):  # the mock notices the closed connection a moment later
        if mock.calls[-1]["status"] is not None:
            break
        await asyncio.sleep(0.02)
    assert mock.calls[-1]["status"] == 499, "the upstream response must be closed, not left streaming"


async def test_metrics_count_calls_and_tokens_per_provider(stub: pb_grpc.RouterServiceStub) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok_before = sample("tollgate_router_upstream_calls_total", provider="mock", mode="complete", outcome="ok")
    limited_before = sample(
        "tollgate_router_upstream_calls_total", provider="mock", mode="stream", outcome="upstream_rate_limited"
    )
    prompt_before = sample("tollgate_router_upstream_tokens_total", provider="mock", kind="prompt")
    reply = await stub.Complete(request())
    with pytest.raises(grpc.aio.AioRpcError):
        await collect(stub.StreamComplete(request(mock_fault="429")))

    assert (
        sample("tollgate_router_upstream_calls_total", provider="mock", mode="complete", outcome="ok") == ok_before + 1
    )
    assert (
        sample("tollgate_router_upstream_calls_total", provider="mock", mode="stream", outcome="upstream_rate_limited")
        == limited_before + 2  # retried once on the same deployment, after its Retry-After
    )
    assert (
        sample("tollgate_router_upstream_tokens_total", provider="mock", kind="prompt")
        == prompt_before + reply.usage.prompt_tokens
    )
