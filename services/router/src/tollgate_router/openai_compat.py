"""The adapter for OpenAI-compatible providers (OpenAI, DeepSeek, vLLM, the development mock…).

One long-lived ``aiohttp.ClientSession`` per process keeps a keep-alive pool to every provider: opening a TLS
connection per request would cost more than everything else the router does. The request body crosses unchanged
but for the model name (the provider's own) and, when streaming, ``stream_options.include_usage`` (without it
OpenAI reports no usage on streams, and an unmetered call cannot be billed).
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import orjson

from .adapters import StreamEvent
from .domain import Completion, Route, StreamEnded, Usage
from .errors import (
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .sse import SseDecoder

__all__ = ["OpenAICompatibleAdapter", "create_session"]

log = logging.getLogger(__name__)

_MAX_ERROR_MESSAGE = 2000
_REJECTED_STATUSES = frozenset({400, 413, 422})


def create_session(max_connections: int) -> aiohttp.ClientSession:
    """The process's one HTTP client; created inside the running loop, closed on shutdown."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda value: orjson.dumps(value).decode(),
        read_bufsize=2**18,
        raise_for_status=False,
    )


def _upstream_message(raw: bytes) -> str:
    """The human-readable message of an error body (OpenAI's ``error.message``, else the text, shortened)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_MESSAGE]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:_MAX_ERROR_MESSAGE]
        if isinstance(error, str):
            return error[:_MAX_ERROR_MESSAGE]
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:_MAX_ERROR_MESSAGE]
    return raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_MESSAGE]


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> int:
    """Whole seconds to wait, from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date); at least 1."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(1, math.ceil(float(millis) / 1000))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(1, math.ceil(float(value)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
                return max(1, math.ceil(when - (time.time() if now is None else now)))
            except (TypeError, ValueError):
                pass
    return 1


def _status_error(route: Route, status: int, headers: Mapping[str, str], raw: bytes) -> RouterError:
    """The error an upstream HTTP status means for the caller (see :mod:`tollgate_router.errors`)."""
    provider = route.provider.name
    if status in _REJECTED_STATUSES:
        return UpstreamRejected(_upstream_message(raw) or f"The upstream rejected the request (HTTP {status}).")
    if status in (401, 403):
        # The upstream's own text is not passed on: OpenAI's quotes part of the key.
        log.error("provider rejected the router's credentials", extra={"provider": provider, "status": status})
        return UpstreamAuthFailed(
            f"The provider '{provider}' rejected the gateway's credentials (HTTP {status}); "
            "the operator must fix its key."
        )
    if status == 429:
        return UpstreamRateLimited(
            f"The provider '{provider}' is rate limiting the gateway: {_upstream_message(raw)}",
            retry_after=retry_after_seconds(headers),
        )
    if status in (408, 504):
        return UpstreamTimeout(f"The provider '{provider}' timed out (HTTP {status}).")
    return UpstreamUnavailable(f"The provider '{provider}' failed (HTTP {status}): {_upstream_message(raw)}")


class OpenAICompatibleAdapter:
    """Speaks OpenAI's ``POST {base_url}/chat/completions`` to any provider that implements it."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._headers: dict[str, dict[str, str]] = {}

    def _headers_for(self, route: Route, request_id: str) -> dict[str, str]:
        base = self._headers.get(route.provider.name)
        if base is None:
            base = {"Content-Type": "application/json"}
            if route.provider.api_key:
                base["Authorization"] = f"Bearer {route.provider.api_key}"
            self._headers[route.provider.name] = base
        if not request_id:
            return base
        return {**base, "X-Client-Request-Id": request_id}

    @staticmethod
    def _url(route: Route) -> str:
        return route.provider.base_url.rstrip("/") + "/chat/completions"

    async def complete(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        body = {**body, "model": route.upstream_model}
        body.pop("stream", None)
        body.pop("stream_options", None)
        try:
            async with self._session.post(
                self._url(route),
                data=orjson.dumps(body),
                headers=self._headers_for(route, request_id),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    raise _status_error(route, response.status, response.headers, raw)
                header_id = response.headers.get("x-request-id", "")
        except TimeoutError:
            raise UpstreamTimeout(f"The provider '{route.provider.name}' did not answer within {timeout:g}s.") from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(route, exc) from None
        try:
            reply = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' answered with invalid JSON.") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("usage"), dict):
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' answered without usage.")
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
            **body,
            "model": route.upstream_model,
            "stream": True,
            "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True},
        }
        provider = route.provider.name
        usage: Usage | None = None
        upstream_id = ""
        try:
            # sock_read bounds each wait (for the headers, then between chunks), not the whole answer: a long
            # stream that keeps flowing is healthy.
            async with self._session.post(
                self._url(route),
                data=orjson.dumps(body),
                headers=self._headers_for(route, request_id),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            ) as response:
                if response.status != 200:
                    raise _status_error(route, response.status, response.headers, await response.read())
                upstream_id = response.headers.get("x-request-id", "")
                decoder = SseDecoder()
                done = False
                async for data in response.content.iter_any():
                    for payload in decoder.feed(data):
                        if done:
                            continue
                        if payload == b"[DONE]":
                            done = True  # keep reading to the end so the connection returns to the pool
                            continue
                        chunk, chunk_usage = self._chunk(route, payload)
                        if not upstream_id:
                            upstream_id = str(chunk.get("id") or "")
                        if chunk_usage is not None:
                            usage = chunk_usage
                            if not chunk.get("choices"):
                                continue  # the usage-only final chunk: its content travels in StreamEnded
                        yield orjson.dumps(chunk)
                for payload in decoder.close():
                    if not done and payload != b"[DONE]":
                        chunk, chunk_usage = self._chunk(route, payload)
                        usage = chunk_usage or usage
                        if chunk.get("choices"):
                            yield orjson.dumps(chunk)
        except TimeoutError:
            raise UpstreamTimeout(f"The provider '{provider}' went silent for {timeout:g}s.") from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(route, exc) from None
        if usage is None:
            raise UpstreamUnavailable(f"The provider '{provider}' ended the stream without reporting usage.")
        yield StreamEnded(
            usage=usage, provider=provider, upstream_model=route.upstream_model, upstream_request_id=upstream_id
        )

    @staticmethod
    def _chunk(route: Route, payload: bytes) -> tuple[dict[str, Any], Usage | None]:
        """One chunk without its ``usage`` key, and that usage when present."""
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' streamed invalid JSON.") from None
        if not isinstance(chunk, dict):
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' streamed an unexpected event.")
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' failed mid-stream: {message}")
        usage = chunk.pop("usage", None)
        return chunk, Usage.from_openai(usage) if isinstance(usage, dict) else None

    @staticmethod
    def _unreachable(route: Route, exc: aiohttp.ClientError) -> UpstreamUnavailable:
        log.warning("provider unreachable", extra={"provider": route.provider.name, "error": type(exc).__name__})
        return UpstreamUnavailable(f"The provider '{route.provider.name}' could not be reached ({type(exc).__name__}).")
