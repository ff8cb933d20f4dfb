"""The adapter for Google's Gemini API (``generateContent`` / ``streamGenerateContent?alt=sse``).

Request (OpenAI → Gemini), to ``POST {base}/v1beta/models/{upstream_model}:generateContent`` with the key in
``x-goog-api-key``:

- ``system``/``developer`` messages → ``systemInstruction``; ``user`` → ``role: user`` (text parts, ``image_url``
  data URLs as ``inlineData``; other image URLs are a 400: Gemini only fetches its own file URIs);
  ``assistant`` → ``role: model`` with text and ``functionCall`` parts; ``tool`` → a ``functionResponse`` part
  (its name found from the matching earlier tool call) in a user turn. Consecutive turns of a role are merged.
- ``generationConfig``: ``temperature`` (0–2), ``topP``, ``maxOutputTokens``, ``stopSequences``, ``seed``,
  ``presencePenalty``, ``frequencyPenalty``; ``response_format`` json_object → ``responseMimeType:
  application/json``, json_schema → that plus ``responseJsonSchema`` (Gemini's JSON-Schema field, so the
  caller's schema crosses unchanged); ``reasoning_effort`` → ``thinkingConfig.thinkingBudget`` with Google's own
  OpenAI-compatibility mapping (:data:`THINKING_BUDGETS`: ``none``/``minimal`` 0, ``low`` 1,024, ``medium``
  8,192, ``high`` 24,576 thinking tokens). The thinking is billed: ``thoughtsTokenCount`` is in the usage below.
- ``tools`` → one ``functionDeclarations`` tool; ``tool_choice`` auto/none/required/named →
  ``toolConfig.functionCallingConfig`` AUTO/NONE/ANY/ANY with ``allowedFunctionNames``.
- Rejected with a 400: ``n`` > 1, ``logprobs``/``top_logprobs``, ``logit_bias``, ``audio``/``modalities``,
  ``parallel_tool_calls: false`` (Gemini cannot forbid parallel calls).

Response: the first candidate's text parts (not ``thought`` parts) → ``content``, ``functionCall`` parts →
``tool_calls`` (ids ``call_<n>``: Gemini gives none). ``finishReason`` STOP → stop (tool_calls when the answer
is function calls), MAX_TOKENS → length, SAFETY/RECITATION/BLOCKLIST/PROHIBITED_CONTENT/SPII/IMAGE_SAFETY →
content_filter, anything else → stop; a prompt blocked before any candidate → content_filter.

Usage: ``promptTokenCount`` already includes ``cachedContentTokenCount`` (as OpenAI's ``prompt_tokens``), plus
``toolUsePromptTokenCount``; OpenAI counts reasoning inside ``completion_tokens``, so
``completion = candidatesTokenCount + thoughtsTokenCount`` and ``reasoning_tokens = thoughtsTokenCount``.

Streaming: every SSE event is a ``GenerateContentResponse`` carrying the new parts; the last one carries the
``finishReason`` and the final ``usageMetadata``. A stream that ends without a finish reason was cut: an
upstream failure.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .adapters import StreamEvent
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

__all__ = ["GeminiAdapter", "gemini_usage", "to_gemini"]

FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})
UNSUPPORTED = {
    "n": "the gateway asks Gemini for a single candidate.",
    "logprobs": "log probabilities are not translated for Gemini.",
    "top_logprobs": "log probabilities are not translated for Gemini.",
    "logit_bias": "Gemini has no logit bias.",
    "audio": "audio output is not translated for Gemini.",
    "modalities": "only text output is translated for Gemini.",
    "prediction": "Gemini has no predicted outputs.",
    "reasoning": "extended thinking is translated for Anthropic models only.",
}
#: OpenAI's ``reasoning_effort`` → Gemini's ``thinkingBudget`` (tokens), as Google's OpenAI-compatible endpoint
#: maps it; an unknown effort is a 400 rather than a silent default.
THINKING_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}


# ---- request ----------------------------------------------------------------------------------------------------


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid '{where}': expected a string or a list of parts.", param=where)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            inline = data_url(url, f"{where}[{index}].image_url.url") if isinstance(url, str) else None
            if inline is None:
                raise InvalidRequest(f"Invalid '{where}[{index}].image_url': Gemini models take images as data URLs.",
                                     param=f"{where}[{index}].image_url")
            parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
        else:
            raise InvalidRequest(f"Invalid '{where}[{index}]': only text and image_url parts are supported.",
                                 param=f"{where}[{index}]")
    return parts


def _contents(body: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for index, message in enumerate(messages(body)):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.append(text_of(message.get("content"), f"{where}.content"))
        elif role == "user":
            add("user", _user_parts(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            text = text_of(message.get("content"), f"{where}.content")
            if text:
                parts.append({"text": text})
            for n, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise InvalidRequest(f"Invalid '{where}.tool_calls[{n}]': expected a function with a name.",
                                         param=f"{where}.tool_calls[{n}]")
                if isinstance(call.get("id"), str):
                    call_names[call["id"]] = function["name"]
                arguments = tool_arguments(function.get("arguments"), f"{where}.tool_calls[{n}].function.arguments")
                parts.append({"functionCall": {"name": function["name"], "args": arguments}})
            if parts:
                add("model", parts)
        elif role == "tool":
            name = call_names.get(str(message.get("tool_call_id")))
            if name is None:
                raise InvalidRequest(f"Invalid '{where}.tool_call_id': it matches no earlier assistant tool call.",
                                     param=f"{where}.tool_call_id")
            result = text_of(message.get("content"), f"{where}.content")
            add("user", [{"functionResponse": {"name": name, "response": {"content": result}}}])
        else:
            raise InvalidRequest(f"Invalid '{where}.role': {role!r} is not supported for Gemini models.",
                                 param=f"{where}.role")
    if not contents:
        raise InvalidRequest("The request needs at least one user message.")
    return system, contents


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, name, low, high in (
        ("temperature", "temperature", 0, 2),
        ("top_p", "topP", 0, 1),
        ("presence_penalty", "presencePenalty", -2, 2),
        ("frequency_penalty", "frequencyPenalty", -2, 2),
    ):
        value = number(body, key, low=low, high=high)
        if value is not None:
            config[name] = value
    limit = max_tokens(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = stop_sequences(body)
    if stop:
        config["stopSequences"] = stop
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidRequest("Invalid 'seed': expected an integer.", param="seed")
        config["seed"] = seed
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise InvalidRequest("Invalid 'response_format.json_schema': a 'schema' object is required.",
                                     param="response_format.json_schema")
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = schema
        elif kind != "text":
            raise InvalidRequest("Invalid 'response_format': expected type text, json_object or json_schema.",
                                 param="response_format")
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
            raise InvalidRequest(f"Invalid 'reasoning_effort': expected one of {', '.join(THINKING_BUDGETS)}.",
                                 param="reasoning_effort")
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def to_gemini(body: Mapping[str, Any]) -> dict[str, Any]:
    """The generateContent request for an OpenAI chat request (see the module docstring for every field)."""
    reject_unsupported(body, UNSUPPORTED, "Gemini")
    if body.get("parallel_tool_calls") is False:
        raise InvalidRequest("The parameter 'parallel_tool_calls' is not supported for Gemini models.",
                             param="parallel_tool_calls")
    system, contents = _contents(body)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    declared = functions(body)
    if declared:
        request["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": f["name"],
                        **({"description": f["description"]} if isinstance(f.get("description"), str) else {}),
                        **({"parametersJsonSchema": f["parameters"]} if isinstance(f.get("parameters"), dict) else {}),
                    }
                    for f in declared
                ]
            }
        ]
    choice = tool_choice(body)
    if choice is not None:
        mode, name = choice
        calling: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[mode]}
        if name is not None:
            calling["allowedFunctionNames"] = [name]
        request["toolConfig"] = {"functionCallingConfig": calling}
    return request


# ---- response ---------------------------------------------------------------------------------------------------


def gemini_usage(metadata: Mapping[str, Any]) -> Usage:
    """Gemini's ``usageMetadata`` in OpenAI's convention (cached inside prompt, thoughts inside completion)."""
    count = UsageReader()
    prompt = count(metadata.get("promptTokenCount"), "promptTokenCount") + count(
        metadata.get("toolUsePromptTokenCount"), "toolUsePromptTokenCount"
    )
    thoughts = count(metadata.get("thoughtsTokenCount"), "thoughtsTokenCount")
    completion = count(metadata.get("candidatesTokenCount"), "candidatesTokenCount") + thoughts
    return count.usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_prompt_tokens=count(metadata.get("cachedContentTokenCount"), "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _tool_call(n: int, call: Mapping[str, Any]) -> ToolCall:
    """A ``functionCall`` part as an OpenAI tool call; its own ``id`` when Gemini gives one, else ``call_<n>``."""
    call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{n}"
    return ToolCall(str(call_id), str(call.get("name")), orjson.dumps(call.get("args", {})).decode())


def _finish(reason: str, has_calls: bool) -> str:
    if reason in FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


def _parts(response: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The first candidate's parts and its finish reason (``SAFETY`` when the prompt itself was blocked)."""
    candidates = response.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        feedback = response.get("promptFeedback")
        blocked = isinstance(feedback, dict) and feedback.get("blockReason")
        return [], "SAFETY" if blocked else None
    candidate = candidates[0] if isinstance(candidates[0], dict) else {}
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    reason = candidate.get("finishReason")
    return [p for p in parts or [] if isinstance(p, dict)], str(reason) if reason else None


class GeminiAdapter:
    """Speaks the Gemini API (``v1beta``) with the key in ``x-goog-api-key``."""

    def __init__(self, session: aiohttp.ClientSession, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self._session = session
        self._limits = limits

    @staticmethod
    def _url(route: Route, method: str) -> str:
        model = quote(route.upstream_model, safe="")
        return f"{route.provider.base_url.rstrip('/')}/v1beta/models/{model}:{method}"

    @staticmethod
    def _headers(route: Route, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if route.provider.api_key:
            headers["x-goog-api-key"] = route.provider.api_key
        if request_id:
            headers["X-Client-Request-Id"] = request_id
        return headers

    async def complete(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        reply, _ = await post_json(
            self._session,
            route,
            self._url(route, "generateContent"),
            self._headers(route, request_id),
            to_gemini(body),
            timeout=timeout,
            request_id_header="x-request-id",
            limits=self._limits,
        )
        metadata = reply.get("usageMetadata")
        if not isinstance(metadata, dict):
            raise answered(UpstreamUnavailable(f"The provider '{route.provider.name}' answered without usageMetadata."))
        usage = gemini_usage(metadata)
        parts, reason = _parts(reply)
        texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
        calls = [
            _tool_call(n, part["functionCall"])
            for n, part in enumerate(p for p in parts if isinstance(p.get("functionCall"), dict))
        ]
        response_id = str(reply.get("responseId") or "")
        return translated_completion(
            route,
            completion_id=response_id,
            model=str(reply.get("modelVersion") or route.upstream_model),
            texts=texts,
            tool_calls=calls,
            finish_reason=_finish(reason or "STOP", bool(calls)),
            usage=usage,
            upstream_request_id=response_id,
        )

    async def stream(
        self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float
    ) -> AsyncGenerator[StreamEvent, None]:
        request = to_gemini(body)
        provider = route.provider.name
        meta = StreamMeta()
        write: ChunkWriter | None = None
        metadata: dict[str, Any] | None = None
        finished: str | None = None
        calls = 0
        events = post_sse(
            self._session,
            route,
            self._url(route, "streamGenerateContent") + "?alt=sse",
            self._headers(route, request_id),
            request,
            timeout=timeout,
            request_id_header="x-request-id",
            meta=meta,
            limits=self._limits,
        )
        async with aclosing(events):
            async for event in events:
                if "error" in event and "candidates" not in event:
                    raise stream_failure(provider, event["error"])
                if write is None:
                    write = ChunkWriter(
                        str(event.get("responseId") or ""), str(event.get("modelVersion") or route.upstream_model)
                    )
                    yield write({"role": "assistant", "content": ""})
                if isinstance(event.get("usageMetadata"), dict):
                    metadata = event["usageMetadata"]
                parts, reason = _parts(event)
                for part in parts:
                    if isinstance(part.get("text"), str) and not part.get("thought"):
                        yield write({"content": part["text"]})
                    elif isinstance(part.get("functionCall"), dict):
                        call = _tool_call(calls, part["functionCall"]).as_openai()
                        delta = {"index": calls, **call}
                        calls += 1
                        yield write({"tool_calls": [delta]})
                if reason is not None and finished is None:
                    finished = reason
                    yield write({}, _finish(reason, calls > 0))
        if finished is None or write is None:
            raise answered(UpstreamUnavailable(f"The provider '{provider}' ended the stream without a finish reason."))
        if metadata is None:
            raise answered(UpstreamUnavailable(f"The provider '{provider}' ended the stream without reporting usage."))
        yield StreamEnded(
            usage=gemini_usage(metadata),
            provider=provider,
            upstream_model=route.upstream_model,
            upstream_request_id=write.completion_id or meta.request_id,
        )
