"""The OpenAI-compatible adapter in its two URL schemes (OpenAI's and Azure OpenAI's), through the real router.

OpenAI's usage already counts cached tokens inside ``prompt_tokens`` and reasoning inside
``completion_tokens``; the router must pass those numbers on unchanged (no double counting), for both.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_dev.mock_upstream import DEFAULT_REPLY, MockUpstream

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]

HELLO = [{"role": "user", "content": "Hello, Azure"}]


def request(model: str, **fields: Any) -> pb.CompleteRequest:
    body = {"model": model, "messages": HELLO, **fields}
    return pb.CompleteRequest(request_id="req_o", account_id="acc_o", model=model, body_json=json.dumps(body).encode())


def assert_same_usage(usage: pb.Usage, reported: dict[str, Any]) -> None:
    assert usage.prompt_tokens == reported["prompt_tokens"] > 0
    assert usage.completion_tokens == reported["completion_tokens"] > 0
    assert usage.total_tokens == reported["total_tokens"] == usage.prompt_tokens + usage.completion_tokens
    assert usage.cached_prompt_tokens == reported["prompt_tokens_details"]["cached_tokens"]
    assert usage.reasoning_tokens == reported["completion_tokens_details"]["reasoning_tokens"]


async def azure_stub(tmp_path: Path, mock: MockUpstream, start_router: StartRouter) -> pb_grpc.RouterServiceStub:
    root = mock.base_url.removesuffix("/v1")
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
providers:
  azure-eu:
    kind: azure
    base_url: "{root}"
    api_key_env: AZURE_KEY
    options: {{api_version: "2024-10-21"}}
models:
  gpt-4o: {{provider: azure-eu, upstream_model: gpt4o-prod, owned_by: openai}}
"""
    )
    return await start_router(ROUTER_PROVIDERS_FILE=str(providers), AZURE_KEY="azure-secret")


async def test_openai_cached_and_reasoning_tokens_pass_through_once(
    stub: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    mock.cached_tokens, mock.reasoning_tokens = 5, 7
    reply = await stub.Complete(request("gpt-4o-mini"))
    [record] = mock.calls
    assert record["format"] == "openai"
    assert_same_usage(reply.usage, record["usage"])
    assert reply.usage.cached_prompt_tokens == 5 and reply.usage.reasoning_tokens == 7


async def test_azure_complete_uses_the_deployment_url_and_api_key_header(
    tmp_path: Path, mock: MockUpstream, start_router: StartRouter
) -> None:
    stub = await azure_stub(tmp_path, mock, start_router)
    mock.cached_tokens = 3
    reply = await stub.Complete(request("gpt-4o", max_tokens=20))

    [record] = mock.calls
    assert record["format"] == "azure" and record["status"] == 200  # the mock answers 404 without api-version
    assert record["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert record["authorization_present"] is True  # the api-key header
    assert record["body"]["model"] == "gpt4o-prod"
    assert_same_usage(reply.usage, record["usage"])
    assert reply.provider == "azure-eu"
    assert json.loads(reply.body_json)["choices"][0]["message"]["content"] == DEFAULT_REPLY


async def test_azure_stream_reports_the_recorded_usage(
    tmp_path: Path, mock: MockUpstream, start_router: StartRouter
) -> None:
    stub = await azure_stub(tmp_path, mock, start_router)
    call = stub.StreamComplete(request("gpt-4o"))
    chunks, end = [], None
    while (message := await call.read()) is not grpc.aio.EOF:
        if message.WhichOneof("event") == "chunk_json":
            chunks.append(json.loads(message.chunk_json))
        else:
            end = message.end
    assert end is not None
    [record] = mock.calls
    assert record["format"] == "azure" and record["stream"] is True
    assert_same_usage(end.usage, record["usage"])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == DEFAULT_REPLY
