"""The adapter for OpenAI-compatible providers (OpenAI, DeepSeek, vLLM, the development mock…).

Azure OpenAI (kind ``azure``) is the same wire format: ``{base}/openai/deployments/{upstream_model}/chat/completions
?api-version={options.api_version}`` with an ``api-key`` header; its usage is OpenAI's, read the same way.

One long-lived ``aiohttp.ClientSession`` per process keeps a keep-alive pool to every provider: opening a TLS
connection per request would cost more than everything else the router does. The request body crosses unchanged
but for the model name (the provider's own) and, when streaming, ``stream_options.include_usage`` (without it
OpenAI reports no usage on streams, and an unmetered call cannot be billed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .adapters import StreamEvent
from .domain import Completion, Route, StreamEnded, Usage
from .errors import InvalidRequest, UpstreamUnavailable
from .upstream_http import (
    DEFAULT_LIMITS,
    StreamMeta,
    UpstreamLimits,
    answer_json,
    answered,
    event_json,
    post_raw,
    post_sse_data,
    retry_after_seconds,
    stream_failure,
)

__all__ = ["OpenAICompatibleAdapter", "create_session", "retry_after_seconds"]

log = logging.getLogger(__name__)


def create_session(max_connections: int) -> aiohttp.ClientSession:
    """The process's one HTTP client; created inside the running loop, closed on shutdown."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda value: orjson.dumps(value).decode(),
        read_bufsize=2**18,
        raise_for_status=False,
    )


def without_foreign_reasoning(route: Route, body: dict[str, Any]) -> dict[str, Any]:
    """The body without OpenRouter's reasoning fields, unless the provider speaks them (``options.reasoning:
    openrouter``, e.g. OpenRouter itself): OpenAI refuses unknown fields. Earlier turns' ``reasoning_details``
    (Claude's signed thinking, from /v1/messages) are dropped, as context this model cannot use; a request for
    thinking (``reasoning``) is a 400 rather than silently ignored."""
    if route.provider.options.get("reasoning") == "openrouter":
        return body
    if body.get("reasoning") is not None:
        raise InvalidRequest(f"Extended thinking ('reasoning', or Anthropic's 'thinking') is not supported by the "
                             f"provider '{route.provider.name}' of model '{route.model}'.", param="reasoning")
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(isinstance(m, dict) and "reasoning_details" in m for m in messages):
        return body
    kept = [{k: v for k, v in m.items() if k != "reasoning_details"} if isinstance(m, dict) else m for m in messages]
    return {**body, "messages": kept}


class OpenAICompatibleAdapter:
    """Speaks OpenAI's ``POST {base_url}/chat/completions`` to any provider that implements it."""

    def __init__(self, session: aiohttp.ClientSession, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self._session = session
        self._limits = limits
        self._headers: dict[str, dict[str, str]] = {}

    def _headers_for(self, route: Route, request_id: str) -> dict[str, str]:
        base = self._headers.get(route.provider.name)
        if base is None:
            base = {"Content-Type": "application/json"}
            if route.provider.api_key:
                if route.provider.kind == "azure":
                    base["api-key"] = route.provider.api_key
                else:
                    base["Authorization"] = f"Bearer {route.provider.api_key}"
            self._headers[route.provider.name] = base
        if not request_id:
            return base
        return {**base, "X-Client-Request-Id": request_id}

    @staticmethod
    def _url(route: Route) -> str:
        """OpenAI's ``{base}/chat/completions``; Azure's deployment URL, with its required ``api-version``."""
        base = route.provider.base_url.rstrip("/")
        if route.provider.kind != "azure":
            return base + "/chat/completions"
        version = route.provider.options.get("api_version", "")
        if not version:
            # An operator's mistake, not the caller's: Azure rejects every call without it.
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' has no options.api_version configured.")
        deployment = quote(route.upstream_model, safe="")
        return f"{base}/openai/deployments/{deployment}/chat/completions?api-version={quote(version, safe='')}"

    async def complete(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        body = {**without_foreign_reasoning(route, body), "model": route.upstream_model}
        body.pop("stream", None)
        body.pop("stream_options", None)
        raw, header_id = await post_raw(
            self._session,
            route,
            self._url(route),
            self._headers_for(route, request_id),
            body,
            timeout=timeout,
            request_id_header="x-request-id",
            limits=self._limits,
        )
        reply = answer_json(route, raw)
        if not isinstance(reply.get("usage"), dict):
            raise answered(UpstreamUnavailable(f"The provider '{route.provider.name}' answered without usage."))
        return Completion(
            body_json=raw,
            usage=Usage.from_openai(reply["usage"]),
            provider=route.provider.name,
            upstream_model=route.upstream_model,
            upstream_request_id=header_id or str(reply.get("id") or ""),
        )

    async def stream(
        self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float
    ) -> AsyncGenerator[StreamEvent, None]:
        options = body.get("stream_options")
        body = {
            **without_foreign_reasoning(route, body),
            "model": route.upstream_model,
            "stream": True,
            "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True},
        }
        provider = route.provider.name
        usage: Usage | None = None
        meta = StreamMeta()
        upstream_id = ""
        payloads = post_sse_data(
            self._session,
            route,
            self._url(route),
            self._headers_for(route, request_id),
            body,
            timeout=timeout,
            request_id_header="x-request-id",
            meta=meta,
            limits=self._limits,
        )
        done = False
        async with aclosing(payloads):
            async for payload in payloads:
                if done:
                    continue
                if payload == b"[DONE]":
                    done = True  # keep reading to the end so the connection returns to the pool
                    continue
                chunk, chunk_usage = self._chunk(route, payload)
                upstream_id = upstream_id or meta.request_id or str(chunk.get("id") or "")
                if chunk_usage is not None:
                    usage = chunk_usage
                    if not chunk.get("choices"):
                        continue  # the usage-only final chunk: its content travels in StreamEnded
                yield orjson.dumps(chunk)
        if usage is None:
            raise answered(UpstreamUnavailable(f"The provider '{provider}' ended the stream without reporting usage."))
        yield StreamEnded(
            usage=usage, provider=provider, upstream_model=route.upstream_model, upstream_request_id=upstream_id
        )

    @staticmethod
    def _chunk(route: Route, payload: bytes) -> tuple[dict[str, Any], Usage | None]:
        """One chunk without its ``usage`` key, and that usage when present."""
        chunk = event_json(route.provider.name, payload)
        if "error" in chunk and "choices" not in chunk:
            raise stream_failure(route.provider.name, chunk["error"])
        usage = chunk.pop("usage", None)
        return chunk, Usage.from_openai(usage) if isinstance(usage, dict) else None
