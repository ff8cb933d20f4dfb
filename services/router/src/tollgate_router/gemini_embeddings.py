"""Embeddings on Gemini deployments: OpenAI's embeddings body ↔ ``POST {base}/v1beta/models/{m}:batchEmbedContents``.

Request: ``input`` (a string or a list of strings) → one ``EmbedContentRequest`` per text (``model:
models/{upstream}``, ``content.parts[0].text``); ``dimensions`` → ``outputDimensionality``. Token-id arrays are a
400 (Gemini embeds text only); ``user`` has no equivalent and is not sent. Answer: ``embeddings[i].values`` →
OpenAI's ``data[i].embedding``, as floats or, for ``encoding_format: base64``, little-endian float32 in base64
(what OpenAI sends and the openai SDK decodes).

Usage: the Gemini API's ``batchEmbedContents`` reports no token count (its answer is ``embeddings`` only, and
``countTokens`` does not serve embedding models), so the answer's usage is marked *unreported*
(``Completion.usage_reported`` False, prompt_tokens 0): ingress bills its own count of the texts it sent
(cl100k_base, the tokenizer of every hold), and says so in the README. When an upstream does report
``usageMetadata.promptTokenCount`` (Vertex AI's embedContent does), that count is used.
"""

from __future__ import annotations

import base64
import struct
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .domain import Completion, Route, Usage, UsageReader
from .errors import InvalidRequest, UpstreamUnavailable
from .upstream_http import DEFAULT_LIMITS, UpstreamLimits, answered, post_json

__all__ = ["GeminiEmbeddingsAdapter", "to_batch_embed"]

#: Gemini's most requests in one batchEmbedContents call.
MAX_BATCH = 100


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequest("Invalid 'input' for a Gemini embedding model: expected a string or an array of strings "
                         "(Gemini embeds text, not token ids).", param="input")


def to_batch_embed(route: Route, body: dict[str, Any]) -> dict[str, Any]:
    """The batchEmbedContents request for an OpenAI embeddings body."""
    texts = _texts(body.get("input"))
    if len(texts) > MAX_BATCH:
        raise InvalidRequest(f"Invalid 'input': a Gemini embedding model takes at most {MAX_BATCH} texts per call.",
                             param="input")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidRequest("Invalid 'dimensions': expected a positive integer.", param="dimensions")
    name = f"models/{route.upstream_model}"
    requests = []
    for text in texts:
        one: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            one["outputDimensionality"] = dimensions
        requests.append(one)
    return {"requests": requests}


def _encoded(values: list[float], encoding: str) -> list[float] | str:
    if encoding != "base64":
        return values
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


class GeminiEmbeddingsAdapter:
    """Speaks ``batchEmbedContents`` with the key in ``x-goog-api-key``; answers OpenAI's embeddings body."""

    def __init__(self, session: aiohttp.ClientSession, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self._session = session
        self._limits = limits

    async def embed(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidRequest("Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format")
        request = to_batch_embed(route, body)
        headers = {"Content-Type": "application/json"}
        if route.provider.api_key:
            headers["x-goog-api-key"] = route.provider.api_key
        if request_id:
            headers["X-Client-Request-Id"] = request_id
        url = (f"{route.provider.base_url.rstrip('/')}/v1beta/models/"
               f"{quote(route.upstream_model, safe='')}:batchEmbedContents")
        reply, header_id = await post_json(self._session, route, url, headers, request, timeout=timeout,
                                           request_id_header="x-request-id", limits=self._limits)
        embeddings = reply.get("embeddings")
        if not isinstance(embeddings, list) or len(embeddings) != len(request["requests"]) or not all(
            isinstance(e, dict) and isinstance(e.get("values"), list) for e in embeddings
        ):
            raise answered(UpstreamUnavailable(
                f"The provider '{route.provider.name}' answered without one embedding per input."))
        metadata = reply.get("usageMetadata")
        reported = isinstance(metadata, dict) and "promptTokenCount" in metadata
        tokens = 0
        if isinstance(metadata, dict) and reported:
            count = UsageReader()
            tokens = count(metadata.get("promptTokenCount"), "promptTokenCount")
            count.usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)  # raises on a bad count
        answer = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encoded(e["values"], encoding)}
                     for i, e in enumerate(embeddings)],
            "model": route.upstream_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        usage = Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)
        return Completion(body_json=orjson.dumps(answer), usage=usage, provider=route.provider.name,
                          upstream_model=route.upstream_model, upstream_request_id=header_id,
                          usage_reported=reported)
