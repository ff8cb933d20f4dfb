"""The adapter for Anthropic's Messages API (``POST {base}/v1/messages``), from and back to OpenAI chat format.

Request (OpenAI → Anthropic):

- ``system``/``developer`` messages → the top-level ``system`` text (joined by blank lines);
  ``user`` → user turns (text parts, ``image_url`` parts as base64 or URL image sources); ``assistant`` →
  text and ``tool_calls`` → ``tool_use`` blocks; ``tool`` → a ``tool_result`` block in a user turn.
  Consecutive turns of one role are merged (Anthropic wants alternation).
- ``max_completion_tokens``/``max_tokens`` → ``max_tokens`` (Anthropic requires it: the provider's
  ``default_max_tokens`` option, else 4096); ``temperature`` (Anthropic's range is 0–1, so 1–2 is a 400),
  ``top_p``, ``stop`` → ``stop_sequences``, ``user`` → ``metadata.user_id``; ``tools`` → ``tools`` with
  ``input_schema``; ``tool_choice`` auto/none/required/named → auto/none/any/tool, ``parallel_tool_calls:
  false`` → ``disable_parallel_tool_use``.
- Rejected with a 400 (Anthropic cannot honour them): ``seed``, ``n`` > 1, ``logprobs``/``top_logprobs``,
  ``frequency_penalty``/``presence_penalty``/``logit_bias``, ``response_format`` other than ``text`` (Anthropic
  has no JSON mode; prompting for JSON would not be the guarantee the caller asked for), ``audio``/``modalities``.

Response: text blocks joined into ``content``, ``tool_use`` blocks → ``tool_calls`` (``input`` as JSON text);
``stop_reason`` end_turn/stop_sequence/pause_turn → stop, max_tokens → length, tool_use → tool_calls,
refusal → content_filter.

Usage: Anthropic's ``input_tokens`` excludes ``cache_read_input_tokens`` and ``cache_creation_input_tokens``;
OpenAI's ``prompt_tokens`` includes cached tokens. So ``prompt_tokens = input + cache_read + cache_creation`` and
``cached_prompt_tokens = cache_read``, ``cache_write_tokens = cache_creation`` (metering prices each kind apart):
every prompt token counted once. ``completion_tokens = output_tokens``
(extended-thinking tokens are inside it and not reported apart, so ``reasoning_tokens`` stays 0).

Streaming: ``message_start`` (id, input usage) → the role chunk; ``content_block_start`` of a ``tool_use`` → a
tool-call chunk with id and name; ``text_delta`` → content chunks, ``input_json_delta`` → argument chunks;
``message_delta`` (``stop_reason``, cumulative ``output_tokens``) → the finish chunk; ``message_stop`` ends it;
``ping`` is skipped; an ``error`` event, or a stream cut before ``message_stop``, is an upstream failure.

Extended thinking (:mod:`tollgate_router.anthropic_thinking`, OpenRouter's convention): ``reasoning.max_tokens`` →
``thinking: {type: enabled, budget_tokens}``; an assistant message's ``reasoning_details`` → its thinking /
redacted_thinking blocks (signatures kept); answered thinking blocks → ``message.reasoning`` +
``reasoning_details``, streamed ``thinking_delta``/``signature_delta`` → ``delta.reasoning`` /
``delta.reasoning_details``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from .adapters import StreamEvent
from .anthropic_thinking import FORMAT, block_detail, detail_blocks, thinking_param
from .domain import Completion, Route, StreamEnded, Usage, UsageReader
from .errors import InvalidRequest, UpstreamUnavailable
from .openai_request import (
    data_url,
    functions,
    max_tokens,
    messages,
    number,
    reject_unsupported,
    stop_sequences,
    text_of,
    tool_arguments,
    tool_choice,
)
from .openai_response import (
    ChunkWriter,
    ToolCall,
    translated_completion,
)
from .upstream_http import (
    DEFAULT_LIMITS,
    StreamMeta,
    UpstreamLimits,
    answered,
    post_json,
    post_sse,
    stream_failure,
)

__all__ = ["AnthropicAdapter", "anthropic_usage", "to_anthropic"]

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
UNSUPPORTED = {
    "seed": "Anthropic has no deterministic sampling seed.",
    "n": "Anthropic returns a single choice.",
    "logprobs": "Anthropic does not return log probabilities.",
    "top_logprobs": "Anthropic does not return log probabilities.",
    "frequency_penalty": "Anthropic has no frequency penalty.",
    "presence_penalty": "Anthropic has no presence penalty.",
    "logit_bias": "Anthropic has no logit bias.",
    "audio": "Anthropic models do not produce audio.",
    "modalities": "Anthropic models produce text only.",
    "prediction": "Anthropic has no predicted outputs.",
}


# ---- request ----------------------------------------------------------------------------------------------------


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid '{where}': expected a string or a list of parts.", param=where)
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise InvalidRequest(f"Invalid '{where}[{index}].image_url': expected a URL.",
                                     param=f"{where}[{index}].image_url")
            inline = data_url(url, f"{where}[{index}].image_url.url")
            source = (
                {"type": "base64", "media_type": inline[0], "data": inline[1]}
                if inline
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
        else:
            raise InvalidRequest(f"Invalid '{where}[{index}]': only text and image_url parts are supported.",
                                 param=f"{where}[{index}]")
    return blocks


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = detail_blocks(message, where)  # the turn's thinking comes first, signed, as Anthropic sent it
    text = text_of(message.get("content"), f"{where}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"Invalid '{where}.tool_calls': expected an array.", param=f"{where}.tool_calls")
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise InvalidRequest(f"Invalid '{where}.tool_calls[{index}]': expected an id and a function.",
                                 param=f"{where}.tool_calls[{index}]")
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function.get("name"),
                "input": tool_arguments(function.get("arguments"), f"{where}.tool_calls[{index}].function.arguments"),
            }
        )
    return blocks


def _turns(body: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for index, message in enumerate(messages(body)):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.append(text_of(message.get("content"), f"{where}.content"))
        elif role == "user":
            add("user", _user_blocks(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            if blocks:  # Anthropic rejects an empty turn; an empty assistant message says nothing
                add("assistant", blocks)
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise InvalidRequest(f"Invalid '{where}.tool_call_id': required for a tool message.",
                                     param=f"{where}.tool_call_id")
            result = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": text_of(message.get("content"), f"{where}.content"),
            }
            add("user", [result])
        else:
            raise InvalidRequest(f"Invalid '{where}.role': {role!r} is not supported for Anthropic models.",
                                 param=f"{where}.role")
    if not turns:
        raise InvalidRequest("The request needs at least one user message.")
    return "\n\n".join(system), turns


def _default_max_tokens(route: Route) -> int:
    """``options.default_max_tokens`` of the provider, else 4096 (Anthropic requires a ``max_tokens``)."""
    value = route.provider.options.get("default_max_tokens")
    if not value:
        return DEFAULT_MAX_TOKENS
    if not value.isdigit() or int(value) < 1:
        raise UpstreamUnavailable(f"The provider '{route.provider.name}' has an invalid options.default_max_tokens.")
    return int(value)


def to_anthropic(route: Route, body: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat request (see the module docstring for every field)."""
    reject_unsupported(body, UNSUPPORTED, "Anthropic")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    ):
        raise InvalidRequest(
            "The parameter 'response_format' (JSON mode / structured outputs) is not supported for Anthropic "
            "models; use a tool with an input schema instead.",
            param="response_format",
        )
    system, turns = _turns(body)
    request: dict[str, Any] = {
        "model": route.upstream_model,
        "max_tokens": max_tokens(body) or _default_max_tokens(route),
        "messages": turns,
    }
    if system:
        request["system"] = system
    temperature = number(body, "temperature", low=0, high=1)
    if temperature is not None:
        request["temperature"] = temperature
    top_p = number(body, "top_p", low=0, high=1)
    if top_p is not None:
        request["top_p"] = top_p
    stop = stop_sequences(body)
    if stop:
        request["stop_sequences"] = stop
    thinking = thinking_param(body)
    if thinking is not None:
        request["thinking"] = thinking
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    declared = functions(body)
    if declared:
        request["tools"] = [
            {
                "name": f["name"],
                **({"description": f["description"]} if isinstance(f.get("description"), str) else {}),
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in declared
        ]
    choice = tool_choice(body)
    if choice is not None:
        mode, name = choice
        choices: dict[str, dict[str, Any]] = {
            "auto": {"type": "auto"},
            "none": {"type": "none"},
            "required": {"type": "any"},
            "function": {"type": "tool", "name": name},
        }
        translated = choices[mode]
        if body.get("parallel_tool_calls") is False and mode != "none":
            translated["disable_parallel_tool_use"] = True
        request["tool_choice"] = translated
    elif body.get("parallel_tool_calls") is False and declared:
        request["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
    return request


# ---- response ---------------------------------------------------------------------------------------------------


def anthropic_usage(usage: Mapping[str, Any]) -> Usage:
    """Anthropic's usage in OpenAI's convention: cached tokens inside the prompt, each token counted once."""
    count = UsageReader()
    uncached = count(usage.get("input_tokens"), "input_tokens")
    cache_read = count(usage.get("cache_read_input_tokens"), "cache_read_input_tokens")
    cache_write = count(usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    prompt = uncached + cache_read + cache_write
    completion = count(usage.get("output_tokens"), "output_tokens")
    return count.usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_prompt_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _thinking_delta(delta: Mapping[str, Any], position: int) -> dict[str, Any]:
    """A ``thinking_delta`` or ``signature_delta`` as OpenRouter streams it (``reasoning`` + a details piece)."""
    piece: dict[str, Any] = {"type": "reasoning.text", "format": FORMAT, "index": position}
    if delta.get("type") == "signature_delta":
        return {"reasoning_details": [{**piece, "signature": str(delta.get("signature") or "")}]}
    text = str(delta.get("thinking") or "")
    return {"reasoning": text, "reasoning_details": [{**piece, "text": text}]}


def _finish(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


class AnthropicAdapter:
    """Speaks Anthropic Messages to ``{base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    def __init__(self, session: aiohttp.ClientSession, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self._session = session
        self._limits = limits

    @staticmethod
    def _url(route: Route) -> str:
        return route.provider.base_url.rstrip("/") + "/v1/messages"

    @staticmethod
    def _headers(route: Route, request_id: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "anthropic-version": route.provider.options.get("anthropic_version", DEFAULT_VERSION),
        }
        if route.provider.api_key:
            headers["x-api-key"] = route.provider.api_key
        if request_id:
            headers["X-Client-Request-Id"] = request_id
        return headers

    async def complete(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        request = to_anthropic(route, body)
        reply, header_id = await post_json(
            self._session,
            route,
            self._url(route),
            self._headers(route, request_id),
            request,
            timeout=timeout,
            request_id_header="request-id",
            limits=self._limits,
        )
        if not isinstance(reply.get("usage"), dict) or not isinstance(reply.get("content"), list):
            raise answered(
                UpstreamUnavailable(f"The provider '{route.provider.name}' answered without content or usage.")
            )
        usage = anthropic_usage(reply["usage"])
        texts: list[str] = []
        calls: list[ToolCall] = []
        details: list[dict[str, Any]] = []
        for block in reply["content"]:
            if not isinstance(block, dict):
                continue
            detail = block_detail(block, len(details))
            if detail is not None:
                details.append(detail)
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                calls.append(
                    ToolCall(str(block.get("id")), str(block.get("name")), orjson.dumps(block.get("input")).decode())
                )
        message_id = str(reply.get("id") or "")
        return translated_completion(
            route,
            completion_id=message_id,
            model=str(reply.get("model") or route.upstream_model),
            texts=texts,
            tool_calls=calls,
            finish_reason=_finish(reply.get("stop_reason")),
            usage=usage,
            upstream_request_id=header_id or message_id,
            reasoning_details=details,
        )

    async def stream(
        self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float
    ) -> AsyncGenerator[StreamEvent, None]:
        request = {**to_anthropic(route, body), "stream": True}
        provider = route.provider.name
        meta = StreamMeta()
        write: ChunkWriter | None = None
        start_usage: dict[str, Any] = {}
        final_usage: dict[str, Any] = {}
        tool_index: dict[int, int] = {}  # content block index → OpenAI tool_calls index
        detail_index: dict[int, int] = {}  # content block index → reasoning_details index
        stopped = False
        events = post_sse(
            self._session,
            route,
            self._url(route),
            self._headers(route, request_id),
            request,
            timeout=timeout,
            request_id_header="request-id",
            meta=meta,
            limits=self._limits,
        )
        async with aclosing(events):
            async for event in events:
                kind = event.get("type")
                if kind == "error":
                    raise stream_failure(provider, event.get("error"))
                if kind == "message_start":
                    message = event.get("message") or {}
                    start_usage = dict(message.get("usage") or {})
                    write = ChunkWriter(str(message.get("id") or ""), str(message.get("model") or route.upstream_model))
                    yield write({"role": "assistant", "content": ""})
                    continue
                if write is None:
                    if kind == "ping":
                        continue
                    raise answered(
                        UpstreamUnavailable(f"The provider '{provider}' streamed {kind!r} before message_start.")
                    )
                if kind == "content_block_start":
                    block = event.get("content_block") or {}
                    if block.get("type") in ("thinking", "redacted_thinking"):
                        detail = detail_index[int(event.get("index", 0))] = len(detail_index)
                        if block.get("type") == "redacted_thinking":
                            yield write({"reasoning_details": [block_detail(block, detail)]})
                    elif block.get("type") == "tool_use":
                        index = tool_index[int(event.get("index", 0))] = len(tool_index)
                        call = {
                            "index": index,
                            "id": block.get("id"),
                            "type": "function",
                            "function": {"name": block.get("name"), "arguments": ""},
                        }
                        yield write({"tool_calls": [call]})
                elif kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    if delta.get("type") == "text_delta":
                        yield write({"content": delta.get("text", "")})
                    elif delta.get("type") in ("thinking_delta", "signature_delta"):
                        thinking_at = detail_index.get(int(event.get("index", 0)))
                        if thinking_at is not None:
                            yield write(_thinking_delta(delta, thinking_at))
                    elif delta.get("type") == "input_json_delta":
                        position = tool_index.get(int(event.get("index", 0)))
                        if position is not None:
                            arguments = {"index": position, "function": {"arguments": delta.get("partial_json", "")}}
                            yield write({"tool_calls": [arguments]})
                elif kind == "message_delta":
                    final_usage.update(event.get("usage") or {})
                    stop_reason = (event.get("delta") or {}).get("stop_reason")
                    if stop_reason is not None:
                        yield write({}, _finish(stop_reason))
                elif kind == "message_stop":
                    stopped = True
        if not stopped:
            raise answered(UpstreamUnavailable(f"The provider '{provider}' ended the stream before message_stop."))
        usage = anthropic_usage({**start_usage, **final_usage})
        yield StreamEnded(
            usage=usage,
            provider=provider,
            upstream_model=route.upstream_model,
            upstream_request_id=meta.request_id or (write.completion_id if write else ""),
        )
