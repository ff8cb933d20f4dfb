"""The HTTP exchange with a provider, and the one mapping of its failures to :mod:`tollgate_router.errors`.

- :func:`post_raw`/:func:`post_json` and :func:`post_sse_data`/:func:`post_sse` (raw bytes / parsed JSON; every
  adapter, OpenAI-compatible included, goes through them) speak HTTP to a provider and turn transport failures
  and error statuses into router errors (400/413/422 → rejected, 401/403 → auth, 429 → rate limited with
  ``Retry-After``, 408/504 → timeout, anything else → unavailable).
- :func:`stream_failure` turns an error event met mid-stream into a failure.

Answers are read within :class:`UpstreamLimits`: a non-streaming body larger than ``max_body_bytes`` (decoded) or
a server-sent event larger than ``max_event_bytes`` is refused as an upstream error, never buffered in full. Every
error raised after the provider answered 200 (a refused, garbled or cut answer) keeps ``status`` 200: the
provider may have billed it, so its attempt is recorded with unknown usage.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .domain import Route
from .errors import (
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .sse import EventTooLarge, SseDecoder

__all__ = [
    "DEFAULT_LIMITS",
    "StreamMeta",
    "UpstreamLimits",
    "event_json",
    "post_json",
    "post_raw",
    "post_sse",
    "post_sse_data",
    "rejection",
    "retry_after_seconds",
    "status_error",
    "stream_failure",
    "upstream_message",
    "without_key",
]

log = logging.getLogger(__name__)

_MAX_ERROR_MESSAGE = 2000
#: An error answer is read up to this much for its message; the rest is dropped.
_MAX_ERROR_BODY = 64 * 1024
_REJECTED_STATUSES = frozenset({400, 413, 422})
#: What a provider's ``param`` / ``code`` may look like to be passed on (gRPC trailers take printable ASCII).
_PARAM = re.compile(r"[A-Za-z0-9_.\[\]\-]{1,200}")
_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """How much of a provider's answer the router holds (``ROUTER_MAX_RESPONSE_BYTES``,
    ``ROUTER_MAX_STREAM_EVENT_BYTES``)."""

    #: A non-streaming answer's body, after decompression.
    max_body_bytes: int = 32 * 2**20
    #: One server-sent event's data (with the line still arriving).
    max_event_bytes: int = 8 * 2**20


DEFAULT_LIMITS = UpstreamLimits()


def rejection(raw: bytes) -> tuple[str, str | None, str | None]:
    """A 4xx body's message, ``param`` and ``code``: the latter two only from OpenAI's error object (Anthropic's
    names the field inside the message, ``"max_tokens: Field required"``; Gemini's ``fieldViolations`` name
    fields of its own request, not the caller's), and only when they are plain tokens safe to carry in a trailer."""
    message = upstream_message(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return message, None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return message, None, None
    param, code = error.get("param"), error.get("code")
    return (
        message,
        param if isinstance(param, str) and _PARAM.fullmatch(param) else None,
        code if isinstance(code, str) and _CODE.fullmatch(code) else None,
    )


def without_key(text: str, route: Route) -> str:
    """``text`` with the provider key masked: an upstream that echoes request headers must not hand it on."""
    key = route.provider.api_key
    return text.replace(key, "***") if key and len(key) >= 8 and key in text else text


def upstream_message(raw: bytes) -> str:
    """The readable message of an error body: ``error.message`` (OpenAI, Anthropic, Gemini), else the text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_MESSAGE]
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Gemini wraps some errors in a one-element array
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


def status_error(route: Route, status: int, headers: Mapping[str, str], raw: bytes) -> RouterError:
    """The error an upstream HTTP status means for the caller; ``error.status`` keeps the status (attempt records)."""
    error = _status_error(route, status, headers, raw)
    error.status = status
    error.message = without_key(error.message, route)
    return error


def _status_error(route: Route, status: int, headers: Mapping[str, str], raw: bytes) -> RouterError:
    provider = route.provider.name
    if status in _REJECTED_STATUSES:
        message, param, code = rejection(raw)
        return UpstreamRejected(
            message or f"The upstream rejected the request (HTTP {status}).", param=param, code=code
        )
    if status in (401, 403):
        # The upstream's own text is not passed on: OpenAI's quotes part of the key.
        log.error("provider rejected the router's credentials", extra={"provider": provider, "status": status})
        return UpstreamAuthFailed(
            f"The provider '{provider}' rejected the gateway's credentials (HTTP {status}); "
            "the operator must fix its key."
        )
    if status == 429:
        return UpstreamRateLimited(
            f"The provider '{provider}' is rate limiting the gateway: {upstream_message(raw)}",
            retry_after=retry_after_seconds(headers),
        )
    if status in (408, 504):
        return UpstreamTimeout(f"The provider '{provider}' timed out (HTTP {status}).")
    return UpstreamUnavailable(f"The provider '{provider}' failed (HTTP {status}): {upstream_message(raw)}")


def unreachable(route: Route, exc: aiohttp.ClientError) -> UpstreamUnavailable:
    log.warning("provider unreachable", extra={"provider": route.provider.name, "error": type(exc).__name__})
    error = UpstreamUnavailable(f"The provider '{route.provider.name}' could not be reached ({type(exc).__name__}).")
    error.unreached = isinstance(exc, aiohttp.ClientConnectorError)  # never connected: nothing was sent
    return error


def answered(error: RouterError) -> RouterError:
    """``error`` met while reading an answer the provider started with 200 (see the module's docstring)."""
    error.status = error.status or 200
    return error


def too_large(route: Route, what: str, limit: int) -> UpstreamUnavailable:
    log.warning("provider answer refused: too large", extra={"provider": route.provider.name, "limit": limit})
    error = UpstreamUnavailable(
        f"The provider '{route.provider.name}' sent {what} larger than the gateway accepts ({limit} bytes)."
    )
    error.status = 200
    return error


async def read_body(response: aiohttp.ClientResponse, route: Route, limit: int) -> bytes:
    """The whole body of a 200 answer, refused beyond ``limit`` bytes before more is held."""
    length = response.content_length
    if length is not None and length > limit:
        raise too_large(route, "an answer", limit)
    if length is not None and response.headers.get("Content-Encoding", "identity") == "identity":
        return await response.read()  # aiohttp reads exactly Content-Length bytes of an unencoded body
    chunks: list[bytes] = []
    size = 0
    async for data in response.content.iter_any():  # decoded: a small compressed body may inflate
        size += len(data)
        if size > limit:
            raise too_large(route, "an answer", limit)
        chunks.append(data)
    return b"".join(chunks)


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """The start of an error answer (for its message); the rest is not read."""
    chunks: list[bytes] = []
    size = 0
    async for data in response.content.iter_any():
        chunks.append(data)
        size += len(data)
        if size >= _MAX_ERROR_BODY:
            break
    return b"".join(chunks)[:_MAX_ERROR_BODY]


async def post_raw(
    session: aiohttp.ClientSession,
    route: Route,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    *,
    timeout: float,
    request_id_header: str,
    limits: UpstreamLimits = DEFAULT_LIMITS,
) -> tuple[bytes, str]:
    """POST ``body``; the bytes answered with 200 and the upstream's request id (header, may be empty)."""
    status = 0
    try:
        async with session.post(
            url, data=orjson.dumps(body), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            status = response.status
            if status != 200:
                raise status_error(route, status, response.headers, await read_error_body(response))
            raw = await read_body(response, route, limits.max_body_bytes)
            return raw, response.headers.get(request_id_header, "")
    except TimeoutError:
        error: RouterError = UpstreamTimeout(
            f"The provider '{route.provider.name}' did not answer within {timeout:g}s."
        )
    except aiohttp.ClientError as exc:
        error = unreachable(route, exc)
    raise answered(error) if status == 200 else error


async def post_json(
    session: aiohttp.ClientSession,
    route: Route,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    *,
    timeout: float,
    request_id_header: str,
    limits: UpstreamLimits = DEFAULT_LIMITS,
) -> tuple[dict[str, Any], str]:
    """POST ``body``; the JSON object answered with 200 and the upstream's request id (header, may be empty)."""
    raw, header_id = await post_raw(
        session, route, url, headers, body, timeout=timeout, request_id_header=request_id_header, limits=limits
    )
    return answer_json(route, raw), header_id


def answer_json(route: Route, raw: bytes) -> dict[str, Any]:
    """A 200 answer's body as the JSON object it must be."""
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise answered(
            UpstreamUnavailable(f"The provider '{route.provider.name}' answered with invalid JSON.")
        ) from None
    if not isinstance(reply, dict):
        raise answered(UpstreamUnavailable(f"The provider '{route.provider.name}' answered with an unexpected body."))
    return reply


@dataclass(slots=True)
class StreamMeta:
    """Filled by :func:`post_sse_data` (and so :func:`post_sse`) once the headers arrived."""

    request_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)


async def post_sse(
    session: aiohttp.ClientSession,
    route: Route,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    *,
    timeout: float,
    request_id_header: str,
    meta: StreamMeta,
    limits: UpstreamLimits = DEFAULT_LIMITS,
) -> AsyncGenerator[dict[str, Any], None]:
    """POST ``body`` and yield each server-sent event's JSON ``data`` object, in order (see :func:`post_sse_data`)."""
    payloads = post_sse_data(
        session,
        route,
        url,
        headers,
        body,
        timeout=timeout,
        request_id_header=request_id_header,
        meta=meta,
        limits=limits,
    )
    async with aclosing(payloads):
        async for payload in payloads:
            yield event_json(route.provider.name, payload)


async def post_sse_data(
    session: aiohttp.ClientSession,
    route: Route,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    *,
    timeout: float,
    request_id_header: str,
    meta: StreamMeta,
    limits: UpstreamLimits = DEFAULT_LIMITS,
) -> AsyncGenerator[bytes, None]:
    """POST ``body`` and yield each server-sent event's raw ``data``, in order.

    ``timeout`` bounds each silence (the headers, then the gap between reads), not the whole stream: a long
    stream that keeps flowing is healthy. A status other than 200 raises before anything is yielded.
    """
    provider = route.provider.name
    status = 0
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        ) as response:
            status = response.status
            if status != 200:
                raise status_error(route, status, response.headers, await read_error_body(response))
            meta.request_id = response.headers.get(request_id_header, "")
            decoder = SseDecoder(limits.max_event_bytes)
            async for data in response.content.iter_any():
                for payload in decoder.feed(data):
                    yield payload
            for payload in decoder.close():
                yield payload
            return
    except TimeoutError:
        error: RouterError = UpstreamTimeout(f"The provider '{provider}' went silent for {timeout:g}s.")
    except aiohttp.ClientError as exc:
        error = unreachable(route, exc)
    except EventTooLarge:
        error = too_large(route, "a stream event", limits.max_event_bytes)
    raise answered(error) if status == 200 else error


def event_json(provider: str, payload: bytes) -> dict[str, Any]:
    """One server-sent event's ``data`` as the JSON object it must be."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise answered(UpstreamUnavailable(f"The provider '{provider}' streamed invalid JSON.")) from None
    if not isinstance(event, dict):
        raise answered(UpstreamUnavailable(f"The provider '{provider}' streamed an unexpected event."))
    return event


def stream_failure(provider: str, error: Any) -> RouterError:
    """The failure an error event in a provider's stream means (``error`` is its ``error`` object or text)."""
    message = error.get("message") if isinstance(error, dict) else error
    return answered(UpstreamUnavailable(f"The provider '{provider}' failed mid-stream: {message}"))
