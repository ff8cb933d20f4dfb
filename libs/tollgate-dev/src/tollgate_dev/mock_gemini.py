"""The mock's Gemini ``POST /v1beta/models/{model}:{method}``. DEVELOPMENT ONLY.

``:generateContent`` and ``:streamGenerateContent`` (``?alt=sse`` for SSE, else one JSON array); ``mode: ANY``
gets a ``functionCall``; ``:batchEmbedContents`` for its embedding models (``embeddings[i].values`` only: the
Gemini API reports no token count, so the record's ``usage`` is None and ``input_tokens`` is the cl100k count).
Faults by header or armed rule only, in Google's error JSON (a bad key is Google's 403).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web

from . import mock_embeddings
from . import mock_wire as wire
from .mock_serving import TIMEOUT_FAULT_SECONDS, BadRequest, MockState, dumps, knob, write_events
from .mock_tokens import count_tokens

__all__ = ["routes"]


def routes(mock: MockState) -> list[web.RouteDef]:
    return [web.post("/v1beta/models/{target}", partial(models_target, mock))]


async def models_target(mock: MockState, request: web.Request) -> web.StreamResponse:
    record = mock.record(request, "gemini", "x-goog-api-key")
    return await mock.recorded(record, _serve(mock, request, record))


async def _serve(mock: MockState, request: web.Request, record: dict[str, Any]) -> web.StreamResponse:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = dumps(wire.gemini_error(status, message))
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    model, _, method = request.match_info["target"].partition(":")
    if method == "batchEmbedContents" and model in mock_embeddings.GEMINI_EMBEDDING_MODELS:
        return await _embed(mock, request, record, model, error)
    if method not in ("generateContent", "streamGenerateContent") or not model:
        return error(404, f"Method not found: {request.match_info['target']}")
    record["model"] = model
    record["stream"] = method == "streamGenerateContent"
    sse = request.query.get("alt") == "sse"
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error(400, "Invalid JSON payload received.")
    record["body"] = body
    try:
        fault, retry_after = await mock.admit(request, body, record, wire.validate_gemini)
    except BadRequest as exc:
        return error(400, exc.message)
    if fault == "500":
        return error(500, "An internal error has occurred. (mock fault)")
    if fault == "overloaded":
        return error(503, "The model is overloaded. Please try again later. (mock fault)")
    if fault == "429":
        return error(
            429, "Resource has been exhausted (e.g. check quota). (mock fault)", {"Retry-After": str(retry_after)}
        )
    if fault == "401":
        return error(403, "Method doesn't allow unregistered callers. (mock fault)")
    if fault == "timeout":
        await asyncio.sleep(TIMEOUT_FAULT_SECONDS)

    config = body.get("generationConfig") or {}
    limit = config.get("maxOutputTokens")
    prompt = wire.gemini_prompt_tokens(body)
    cached = min(mock.cached_tokens, prompt)
    thoughts = mock.reasoning_tokens
    tool = wire.gemini_tool(body)
    pieces, finish = mock.reply.cut(limit if isinstance(limit, int) and limit > 0 else None)
    if tool is not None:
        pieces = ()
    reason = "MAX_TOKENS" if finish == "length" else "STOP"
    candidates = len(pieces) if tool is None else count_tokens(json.dumps(wire.TOOL_INPUT, separators=(",", ":")))
    usage = wire.gemini_usage(prompt, cached, candidates, thoughts)
    record["usage"] = usage
    response_id = record["id"]  # Gemini's responseId is how a caller names the call
    if not record["stream"]:
        parts = [{"functionCall": {"name": tool, "args": wire.TOOL_INPUT}}] if tool else [{"text": "".join(pieces)}]
        reply = wire.gemini_response(response_id, model, parts, reason, usage)
        return web.Response(body=dumps(reply), content_type="application/json")
    chunks = wire.gemini_chunks(
        response_id, model, pieces, mock.chunk_tokens, tool, reason, prompt, cached, thoughts
    )
    if tool is not None:
        chunks[-1]["usageMetadata"] = usage
    if not sse:  # without alt=sse the stream is one JSON array, written as it grows
        return web.Response(body=dumps(chunks), content_type="application/json")
    events = [b"data: " + dumps(chunk) + b"\r\n\r\n" for chunk in chunks]
    chunk_delay_ms = knob(request, None, "X-Mock-Chunk-Delay-Ms", "")
    return await write_events(request, {}, events, 1 if fault == "disconnect" else None, chunk_delay_ms)


async def _embed(
    mock: MockState, request: web.Request, record: dict[str, Any], model: str, error: Callable[..., web.Response]
) -> web.StreamResponse:
    """Gemini ``batchEmbedContents``: deterministic vectors; the record's ``usage`` is None, because the Gemini
    API reports none (its ``input_tokens`` is the cl100k count of the texts, for tests to compare with)."""
    record["model"] = model
    record["stream"] = False
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error(400, "Invalid JSON payload received.")
    record["body"] = body
    try:
        fault, retry_after = await mock.admit(
            request, body, record, lambda b: mock_embeddings.batch_embed_problem(model, b))
    except BadRequest as exc:
        return error(400, exc.message)
    if fault in ("500", "overloaded"):
        return error(503 if fault == "overloaded" else 500, "An internal error has occurred. (mock fault)")
    if fault == "429":
        return error(429, "Resource has been exhausted (e.g. check quota). (mock fault)",
                     {"Retry-After": str(retry_after)})
    if fault == "401":
        return error(403, "Method doesn't allow unregistered callers. (mock fault)")
    record["usage"] = None
    record["input_tokens"] = sum(count_tokens(p["text"]) for one in body["requests"]
                                 for p in one["content"]["parts"])
    reply = mock_embeddings.batch_embedding_body(model, body)
    return web.Response(body=dumps(reply), content_type="application/json")
