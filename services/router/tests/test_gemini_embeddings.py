"""Gemini embeddings against the real mock's batchEmbedContents: OpenAI's body in, OpenAI's body out, and the
usage marked unreported (the Gemini API gives no token count) unless the upstream sends usageMetadata."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from tollgate_dev.mock_upstream import MockUpstream
from tollgate_router.domain import Provider, Route
from tollgate_router.errors import InvalidRequest
from tollgate_router.gemini_embeddings import GeminiEmbeddingsAdapter, to_batch_embed
from tollgate_router.openai_compat import create_session


def route(base_url: str, model: str = "gemini-embedding-001") -> Route:
    return Route(model, Provider("google", "gemini", base_url, api_key="AIza-test-key"), model, "google",
                 mode="embedding")


@pytest.fixture
async def adapter() -> AsyncIterator[GeminiEmbeddingsAdapter]:
    session = create_session(4)
    yield GeminiEmbeddingsAdapter(session)
    await session.close()


async def test_texts_become_one_request_each_and_vectors_come_back_in_openai_shape(
    adapter: GeminiEmbeddingsAdapter,
) -> None:
    mock = MockUpstream()
    await mock.start()
    try:
        base = mock.base_url.removesuffix("/v1")
        floats = await adapter.embed(route(base), {"input": ["a", "b"], "dimensions": 4}, request_id="r1", timeout=5)
        packed = await adapter.embed(route(base), {"input": "a", "dimensions": 4, "encoding_format": "base64"},
                                     request_id="r2", timeout=5)
    finally:
        await mock.stop()
    body = orjson.loads(floats.body_json)
    assert [len(d["embedding"]) for d in body["data"]] == [4, 4] and body["object"] == "list"
    decoded = struct.unpack("<4f", base64.b64decode(orjson.loads(packed.body_json)["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(body["data"][0]["embedding"])
    assert not floats.usage_reported and floats.usage.prompt_tokens == 0


async def test_a_reported_prompt_token_count_is_used(adapter: GeminiEmbeddingsAdapter) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"embeddings": [{"values": [0.5, 0.5]}], "usageMetadata": {"promptTokenCount": 7}})

    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await adapter.embed(route(f"http://127.0.0.1:{port}"), {"input": "x"}, request_id="r", timeout=5)
    finally:
        await runner.cleanup()
    assert result.usage_reported and result.usage.prompt_tokens == 7
    assert orjson.loads(result.body_json)["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_what_gemini_cannot_embed_is_a_400_naming_the_param() -> None:
    for body, param in (({"input": [[1, 2]]}, "input"), ({"input": ["x"] * 101}, "input"),
                        ({"input": "x", "dimensions": 0}, "dimensions")):
        with pytest.raises(InvalidRequest) as caught:
            to_batch_embed(route("http://g"), body)
        assert caught.value.param == param
