"""The mock's OpenAI ``POST /v1/embeddings``. DEVELOPMENT ONLY.

Deterministic unit vectors, float or base64 (shapes and vectors in :mod:`tollgate_dev.mock_embeddings`); faults
by header or body field as for chat (500, overloaded, 429, 401), recorded with ``format`` ``openai`` and its usage.
"""

from __future__ import annotations

import json
from functools import partial

from aiohttp import web

from . import mock_embeddings
from .mock_serving import BadRequest, MockState, dumps, knob, openai_error
from .mock_tokens import count_tokens

__all__ = ["routes"]


def routes(mock: MockState) -> list[web.RouteDef]:
    return [web.post("/v1/embeddings", partial(embeddings, mock))]


async def embeddings(mock: MockState, request: web.Request) -> web.StreamResponse:
    """OpenAI embeddings; sets the record's status itself at each answer (as it always has, not via ``recorded``)."""
    record = mock.record(request, "openai", "Authorization")
    try:
        body = json.loads(await request.read())
    except ValueError:
        return openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    record["body"] = body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        record["model"] = body["model"]
    try:
        fault, retry_after, latency_ms = mock.fault(request, body, record, "mock_fault")
        latency_ms += knob(request, body, "X-Mock-Latency-Ms", "mock_latency_ms")
        vectors, tokens, encoding = mock_embeddings.embed(body, count_tokens)
    except (BadRequest, mock_embeddings.EmbeddingRejected) as exc:
        record["status"] = 400
        return openai_error(400, exc.message, "invalid_request_error", param=exc.param)
    await mock.delay(record, latency_ms)
    if fault in ("500", "overloaded"):
        record["status"] = 500
        return openai_error(500, "The server had an error while processing your request. (mock fault)", "server_error")
    if fault == "429":
        record["status"] = 429
        return openai_error(429, "Rate limit reached for requests. (mock fault)", "requests",
                            code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})
    if fault == "401":
        record["status"] = 401
        return openai_error(401, "Incorrect API key provided. (mock fault)", "invalid_request_error",
                            code="invalid_api_key")
    record["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    record["status"] = 200
    reply = mock_embeddings.embedding_body(body["model"], vectors, tokens, encoding)
    return web.Response(body=dumps(reply), content_type="application/json", headers={"x-request-id": record["id"]})
