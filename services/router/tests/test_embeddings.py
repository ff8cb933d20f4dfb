"""Router ``Embed`` over real gRPC in front of two real mock upstreams: OpenAI's embeddings API, routed like
chat (breakers, retries, fallback, authorized models), and only to deployments that serve embeddings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_param
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import MockUpstream
from tollgate_router.config import Settings
from tollgate_router.server import RouterServer


@pytest.fixture
async def router(mock: MockUpstream, backup: MockUpstream, tmp_path: Path) -> AsyncIterator[pb_grpc.RouterServiceStub]:
    catalogue = tmp_path / "providers.yaml"
    catalogue.write_text(
        f"""
providers:
  primary: {{kind: openai, base_url: "{mock.base_url}"}}
  backup: {{kind: openai, base_url: "{backup.base_url}"}}
  claude: {{kind: anthropic, base_url: "{mock.base_url.removesuffix('/v1')}"}}
models:
  emb:
    mode: embedding
    deployments:
      - {{provider: primary, upstream_model: text-embedding-3-small, priority: 0}}
      - {{provider: backup, upstream_model: text-embedding-3-small, priority: 1}}
  haiku: {{provider: claude, upstream_model: claude-3-5-haiku}}
  claude-embed: {{provider: claude, upstream_model: claude-3-5-haiku, mode: embedding}}
"""
    )
    server = RouterServer(Settings.from_env({
        "ROUTER_PROVIDERS_FILE": str(catalogue), "ROUTER_GRPC_PORT": "0",
        "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/router.db", "ROUTER_BACKOFF_BASE_SECONDS": "0.01",
    }))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RouterServiceStub(channel)
    await server.stop(grace=0)


def request(model: str = "emb", **body: object) -> pb.EmbedRequest:
    payload = {"input": ["alpha", "beta"], "encoding_format": "float", **body}
    return pb.EmbedRequest(request_id="req_e1", model=model, body_json=json.dumps(payload).encode())


async def test_embed_returns_the_upstream_body_and_input_only_usage(
    router: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    reply = await router.Embed(request(dimensions=8))
    body = json.loads(reply.body_json)
    record = mock.calls[-1]
    assert record["path"] == "/v1/embeddings" and record["body"]["model"] == "text-embedding-3-small"
    assert [len(d["embedding"]) for d in body["data"]] == [8, 8]
    assert (reply.model, reply.provider, reply.upstream_model) == ("emb", "primary", "text-embedding-3-small")
    assert reply.usage.prompt_tokens == record["usage"]["prompt_tokens"] == reply.usage.total_tokens == 2
    assert reply.usage.completion_tokens == 0 and reply.upstream_request_id == record["id"]


async def test_a_failing_deployment_falls_back_to_the_next(
    router: pb_grpc.RouterServiceStub, mock: MockUpstream, backup: MockUpstream
) -> None:
    mock.faults.arm(FaultRule.parse({"fault": "500", "times": 5}))
    reply = await router.Embed(request())
    assert reply.provider == "backup" and backup.calls[-1]["status"] == 200
    assert [c["status"] for c in mock.calls] == [500, 500]  # tried, retried once, then the fallback


async def test_a_model_without_an_embedding_deployment_is_invalid(
    router: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:  # an embedding model on a provider without the API
        await router.Embed(request("claude-embed"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "embeddings" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as rejected:  # the upstream's own 400 (bad dimensions)
        await router.Embed(request(dimensions=99_999))
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await router.Embed(request("nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_only_an_authorized_model_is_served(router: pb_grpc.RouterServiceStub, mock: MockUpstream) -> None:
    unauthorized = request()
    unauthorized.authorized_models.append("haiku")
    with pytest.raises(grpc.aio.AioRpcError):
        await router.Embed(unauthorized)
    assert mock.calls == []


async def test_the_catalogue_mode_keeps_chat_and_embeddings_apart(
    router: pb_grpc.RouterServiceStub, mock: MockUpstream
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as embedding_a_chat_model:
        await router.Embed(request("haiku"))
    chat = json.dumps({"model": "emb", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with pytest.raises(grpc.aio.AioRpcError) as chatting_with_an_embedding_model:
        await router.Complete(pb.CompleteRequest(request_id="req_c1", model="emb", body_json=chat))
    with pytest.raises(grpc.aio.AioRpcError) as streaming_from_an_embedding_model:
        async for _ in router.StreamComplete(pb.CompleteRequest(request_id="req_c2", model="emb", body_json=chat)):
            pass
    for caught, endpoint in ((embedding_a_chat_model, "/v1/chat/completions"),
                             (chatting_with_an_embedding_model, "/v1/embeddings"),
                             (streaming_from_an_embedding_model, "/v1/embeddings")):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert endpoint in (caught.value.details() or "")
        assert error_param(caught.value) == "model"
    assert mock.calls == [], "a call of the wrong kind never reaches the upstream"
