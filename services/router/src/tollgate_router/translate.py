"""What every adapter shares: the HTTP exchange with a provider, its errors, and the OpenAI shapes built back.

- :func:`post_raw`/:func:`post_json` and :func:`post_sse_data`/:func:`post_sse` (raw bytes / parsed JSON; every
  adapter, OpenAI-compatible included, goes through them) speak HTTP to a provider and turn transport failures
  and error statuses into :mod:`tollgate_router.errors` (the one mapping: 400/413/422 → rejected, 401/403 →
  auth, 429 → rate limited with ``Retry-After``, 408/504 → timeout, anything else → unavailable).
- :func:`translated_completion` and :func:`stream_failure` finish a translating adapter's answer and turn an
  error event met mid-stream into a failure.
- :func:`reject_unsupported`, :func:`max_tokens`, :func:`stop_sequences`, :func:`tool_arguments` read an OpenAI
  chat request; what a provider cannot honour is an :class:`~tollgate_router.errors.InvalidRequest` (400), never
  silently dropped.
- :func:`completion_body` and :func:`chunk` build OpenAI's ``chat.completion`` and ``chat.completion.chunk``
  from a translated answer, and :func:`usage_json` OpenAI's ``usage`` from a normalised :class:`Usage`.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .domain import Completion, Route, Usage
from .errors import (
    InvalidRequest,
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .sse import SseDecoder

__all__ = [
    "ToolCall",
    "chunk",
    "completion_body",
    "event_json",
    "max_tokens",
    "post_json",
    "post_raw",
    "post_sse",
    "post_sse_data",
    "reject_unsupported",
    "retry_after_seconds",
    "status_error",
    "stop_sequences",
    "stream_failure",
    "text_of",
    "tool_arguments",
    "translated_completion",
    "usage_json",
]

log = logging.getLogger(__name__)

_MAX_ERROR_MESSAGE = 2000
_REJECTED_STATUSES = frozenset({400, 413, 422})


# ---- HTTP and errors --------------------------------------------------------------------------------------------


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
    return error


def _status_error(route: Route, status: int, headers: Mapping[str, str], raw: bytes) -> RouterError:
    provider = route.provider.name
    if status in _REJECTED_STATUSES:
        return UpstreamRejected(upstream_message(raw) or f"The upstream rejected the request (HTTP {status}).")
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
    return UpstreamUnavailable(f"The provider '{route.provider.name}' could not be reached ({type(exc).__name__}).")


async def post_raw(
    session: aiohttp.ClientSession,
    route: Route,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    *,
    timeout: float,
    request_id_header: str,
) -> tuple[bytes, str]:
    """POST ``body``; the bytes answered with 200 and the upstream's request id (header, may be empty)."""
    try:
        async with session.post(
            url, data=orjson.dumps(body), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            raw = await response.read()
            if response.status != 200:
                raise status_error(route, response.status, response.headers, raw)
            return raw, response.headers.get(request_id_header, "")
    except TimeoutError:
        raise UpstreamTimeout(f"The provider '{route.provider.name}' did not answer within {timeout:g}s.") from None
    except aiohttp.ClientError as exc:
        raise unreachable(route, exc) from None


async def post_json(
    session: aiohttp.ClientSession,
    route: Route,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    *,
    timeout: float,
    request_id_header: str,
) -> tuple[dict[str, Any], str]:
    """POST ``body``; the JSON object answered with 200 and the upstream's request id (header, may be empty)."""
    raw, header_id = await post_raw(
        session, route, url, headers, body, timeout=timeout, request_id_header=request_id_header
    )
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable(f"The provider '{route.provider.name}' answered with invalid JSON.") from None
    if not isinstance(reply, dict):
        raise UpstreamUnavailable(f"The provider '{route.provider.name}' answered with an unexpected body.")
    return reply, header_id


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
) -> AsyncGenerator[dict[str, Any], None]:
    """POST ``body`` and yield each server-sent event's JSON ``data`` object, in order (see :func:`post_sse_data`)."""
    payloads = post_sse_data(
        session, route, url, headers, body, timeout=timeout, request_id_header=request_id_header, meta=meta
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
) -> AsyncGenerator[bytes, None]:
    """POST ``body`` and yield each server-sent event's raw ``data``, in order.

    ``timeout`` bounds each silence (the headers, then the gap between reads), not the whole stream: a long
    stream that keeps flowing is healthy. A status other than 200 raises before anything is yielded.
    """
    provider = route.provider.name
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        ) as response:
            if response.status != 200:
                raise status_error(route, response.status, response.headers, await response.read())
            meta.request_id = response.headers.get(request_id_header, "")
            decoder = SseDecoder()
            async for data in response.content.iter_any():
                for payload in decoder.feed(data):
                    yield payload
            for payload in decoder.close():
                yield payload
    except TimeoutError:
        raise UpstreamTimeout(f"The provider '{provider}' went silent for {timeout:g}s.") from None
    except aiohttp.ClientError as exc:
        raise unreachable(route, exc) from None


def event_json(provider: str, payload: bytes) -> dict[str, Any]:
    """One server-sent event's ``data`` as the JSON object it must be."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable(f"The provider '{provider}' streamed invalid JSON.") from None
    if not isinstance(event, dict):
        raise UpstreamUnavailable(f"The provider '{provider}' streamed an unexpected event.")
    return event


# ---- reading an OpenAI request ----------------------------------------------------------------------------------


def _present(body: Mapping[str, Any], key: str) -> bool:
    """Set to something other than OpenAI's own default (so ``"seed": null`` or ``"n": 1`` is harmless)."""
    value = body.get(key)
    defaults: dict[str, Any] = {
        "n": 1,
        "logprobs": False,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "parallel_tool_calls": True,
    }
    if value is None:
        return False
    return not (key in defaults and value == defaults[key])


def reject_unsupported(body: Mapping[str, Any], unsupported: Mapping[str, str], provider_kind: str) -> None:
    """A 400 naming the first parameter of ``unsupported`` (name → why) the request sets."""
    for key, why in unsupported.items():
        if _present(body, key):
            raise InvalidRequest(f"The parameter '{key}' is not supported for {provider_kind} models: {why}")


def max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens``, else the older ``max_tokens``; a positive integer or absent."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"Invalid '{key}': expected a positive integer, got {value!r}.")
        return value
    return None


def stop_sequences(body: Mapping[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("Invalid 'stop': expected a string or a list of strings.")


def number(body: Mapping[str, Any], key: str, *, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"Invalid '{key}': expected a number in [{low:g}, {high:g}] for this model.")
    return value


def text_of(content: Any, where: str) -> str:
    """The text of a message content: a string, or a list of ``text`` parts joined; else a 400."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"Invalid '{where}': only text parts are supported here.")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"Invalid '{where}': expected a string or a list of parts.")


def data_url(url: str, where: str) -> tuple[str, str] | None:
    """``(media_type, base64)`` of a ``data:<type>;base64,<data>`` URL, or ``None`` for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise InvalidRequest(f"Invalid '{where}': a data URL must be 'data:<media type>;base64,<data>'.")
    return media_type, data


def tool_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """A tool call's ``function.arguments`` (a JSON string of an object) as the object."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise InvalidRequest(f"Invalid '{where}': expected a JSON string.")
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"Invalid '{where}': not valid JSON.") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid '{where}': expected a JSON object.")
    return value


def functions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of ``tools`` (only function tools exist in chat completions)."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid 'tools': expected an array.")
    result = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"Invalid 'tools[{index}]': expected a function tool with a name.")
        result.append(function)
    return result


def tool_choice(body: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """``tool_choice`` as ``(mode, function name)``: mode is ``auto``, ``none``, ``required`` or ``function``."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return str(choice), None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return "function", function["name"]
    raise InvalidRequest("Invalid 'tool_choice': expected 'auto', 'none', 'required' or a named function.")


def messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("Missing required parameter: 'messages'.")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"Invalid 'messages[{index}]': expected an object with a 'role'.")
    return value


# ---- building OpenAI output -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object (cached inside prompt, reasoning inside completion)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def completion_body(
    *,
    completion_id: str,
    model: str,
    content: str | None,
    tool_calls: Iterable[ToolCall],
    finish_reason: str,
    usage: Usage,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    calls = [call.as_openai() for call in tool_calls]
    if calls:
        message["tool_calls"] = calls
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_json(usage),
    }
    return orjson.dumps(body)


def translated_completion(
    route: Route,
    *,
    completion_id: str,
    model: str,
    texts: list[str],
    tool_calls: list[ToolCall],
    finish_reason: str,
    usage: Usage,
    upstream_request_id: str,
) -> Completion:
    """A translated answer as the :class:`Completion` the router returns (``content`` is null for a tool-only reply)."""
    return Completion(
        body_json=completion_body(
            completion_id=completion_id,
            model=model,
            content="".join(texts) if texts or not tool_calls else None,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=usage,
        ),
        usage=usage,
        provider=route.provider.name,
        upstream_model=route.upstream_model,
        upstream_request_id=upstream_request_id,
    )


def stream_failure(provider: str, error: Any) -> UpstreamUnavailable:
    """The failure an error event in a provider's stream means (``error`` is its ``error`` object or text)."""
    message = error.get("message") if isinstance(error, dict) else error
    return UpstreamUnavailable(f"The provider '{provider}' failed mid-stream: {message}")


@dataclass(slots=True)
class ChunkWriter:
    """Builds the ``chat.completion.chunk`` events of one streamed answer (one choice, index 0)."""

    completion_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def __call__(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return chunk(self.completion_id, self.model, self.created, delta, finish_reason)


def chunk(completion_id: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None) -> bytes:
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
    )


def count(value: Any, key: str) -> int:
    """A token count from a provider's usage; missing is 0, anything but a non-negative integer is a fault."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UpstreamUnavailable(f"The upstream reported an invalid usage.{key}: {value!r}.")
    return value
