"""The Anthropic Messages and Gemini generateContent shapes the mock upstream serves. DEVELOPMENT AND TESTS ONLY.

Pure functions (no I/O): request validation in each provider's terms, a deterministic prompt-token count, and
the bodies and SSE events of an answer, shaped as the real APIs send them:

- Anthropic: ``message`` objects, ``usage`` with ``input_tokens`` EXCLUDING ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``, and the stream ``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``, ``message_delta``
  (``stop_reason``, cumulative ``usage.output_tokens``), ``message_stop``; errors as ``{"type": "error",
  "error": {"type", "message"}}``.
- Gemini: ``GenerateContentResponse`` with ``candidates``, ``usageMetadata`` (``promptTokenCount`` INCLUDING
  ``cachedContentTokenCount``; ``thoughtsTokenCount`` apart from ``candidatesTokenCount``), ``modelVersion``,
  ``responseId``; errors as ``{"error": {"code", "message", "status"}}``.

Prompt tokens are counted like the OpenAI side (cl100k_base, 3 per turn, 3 for the reply priming, system text
and non-text blocks as compact JSON), so one prompt costs about the same in every format.
"""

from __future__ import annotations

import json
from typing import Any

from .mock_tokens import content_tokens, count_tokens

__all__ = [
    "anthropic_error",
    "anthropic_events",
    "anthropic_message",
    "anthropic_prompt_tokens",
    "anthropic_tool",
    "gemini_chunks",
    "gemini_error",
    "gemini_prompt_tokens",
    "gemini_response",
    "gemini_tool",
    "validate_anthropic",
    "validate_gemini",
]

_PER_TURN = 3
_PRIMING = 3
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---- Anthropic --------------------------------------------------------------------------------------------------


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPE.get(status, "api_error"), "message": message}}


def validate_anthropic(body: Any) -> str | None:
    """The message of Anthropic's 400 for a malformed request, or ``None``."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required (an integer >= 1)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{index}.content: Input should be a string or a list of blocks"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a string or a list of text blocks"
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
        return "temperature: Input should be less than or equal to 1"
    return None


def _block_tokens(block: Any) -> int:
    if not isinstance(block, dict):
        return content_tokens(block)
    kind = block.get("type")
    if kind == "text":
        return count_tokens(str(block.get("text", "")))
    if kind == "tool_use":
        return count_tokens(str(block.get("name", ""))) + count_tokens(_compact(block.get("input", {})))
    if kind == "tool_result":
        content = block.get("content")
        return sum(_block_tokens(b) for b in content) if isinstance(content, list) else content_tokens(content)
    if kind == "image":
        return 0
    return count_tokens(_compact(block))


def anthropic_prompt_tokens(body: dict[str, Any]) -> int:
    system = body.get("system")
    total = _PRIMING + (sum(_block_tokens(b) for b in system) if isinstance(system, list) else content_tokens(system))
    for message in body["messages"]:
        content = message["content"]
        total += _PER_TURN + (
            sum(_block_tokens(b) for b in content) if isinstance(content, list) else count_tokens(content)
        )
    return total


def anthropic_tool(body: dict[str, Any]) -> str | None:
    """The tool to call when ``tool_choice`` forces one (``any``: the first declared; ``tool``: the named)."""
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if not isinstance(choice, dict) or not isinstance(tools, list) or not tools:
        return None
    if choice.get("type") == "tool":
        return str(choice.get("name"))
    if choice.get("type") == "any":
        return str(tools[0].get("name"))
    return None


def anthropic_message(
    message_id: str, model: str, text: str | None, tool: str | None, stop_reason: str, usage: dict[str, Any]
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    if tool is not None:
        content.append({"type": "tool_use", "id": "toolu_" + message_id[4:], "name": tool, "input": TOOL_INPUT})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


#: What a forced tool call receives (fixed, so a test can assert the translated arguments).
TOOL_INPUT = {"city": "Paris"}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_compact(data)}\n\n".encode()


def anthropic_events(
    message_id: str,
    model: str,
    pieces: tuple[str, ...],
    chunk_tokens: int,
    tool: str | None,
    stop_reason: str,
    usage: dict[str, Any],
) -> list[bytes]:
    """The whole event sequence of a streamed message (``usage`` is the final one)."""
    start_usage = {**usage, "output_tokens": 1}
    start = anthropic_message(message_id, model, None, None, "", start_usage)
    start["stop_reason"] = None
    events = [_sse("message_start", {"type": "message_start", "message": start})]
    if tool is None:
        events.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        )
        events.append(_sse("ping", {"type": "ping"}))
        for begin in range(0, len(pieces), chunk_tokens):
            delta = {"type": "text_delta", "text": "".join(pieces[begin : begin + chunk_tokens])}
            events.append(_sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    else:
        block = {"type": "tool_use", "id": "toolu_" + message_id[4:], "name": tool, "input": {}}
        events.append(_sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
        arguments = _compact(TOOL_INPUT)
        for begin in range(0, len(arguments), 8):
            delta = {"type": "input_json_delta", "partial_json": arguments[begin : begin + 8]}
            events.append(_sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


# ---- Gemini -----------------------------------------------------------------------------------------------------


def gemini_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}


def validate_gemini(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
            return f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty."
        if content.get("role", "user") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{index}].role: Please use a valid role: user, model."
    config = body.get("generationConfig")
    if config is not None and not isinstance(config, dict):
        return "Invalid value at 'generation_config'"
    return None


def _part_tokens(part: dict[str, Any]) -> int:
    if isinstance(part.get("text"), str):
        return count_tokens(part["text"])
    if "inlineData" in part:
        return 0
    return count_tokens(_compact(part))


def gemini_prompt_tokens(body: dict[str, Any]) -> int:
    total = _PRIMING
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        total += sum(_part_tokens(p) for p in system.get("parts") or [] if isinstance(p, dict))
    for content in body["contents"]:
        total += _PER_TURN + sum(_part_tokens(p) for p in content["parts"] if isinstance(p, dict))
    return total


def gemini_tool(body: dict[str, Any]) -> str | None:
    """The function to call when ``functionCallingConfig.mode`` is ANY (the first allowed or declared)."""
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if config.get("mode") != "ANY":
        return None
    allowed = config.get("allowedFunctionNames")
    if allowed:
        return str(allowed[0])
    for tool in body.get("tools") or []:
        for declaration in tool.get("functionDeclarations") or []:
            return str(declaration.get("name"))
    return None


def gemini_usage(prompt: int, cached: int, candidates: int, thoughts: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def gemini_response(
    response_id: str, model: str, parts: list[dict[str, Any]], finish_reason: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}


def gemini_chunks(
    response_id: str,
    model: str,
    pieces: tuple[str, ...],
    chunk_tokens: int,
    tool: str | None,
    finish_reason: str,
    prompt: int,
    cached: int,
    thoughts: int,
) -> list[dict[str, Any]]:
    """The streamed responses: each with its new parts and the usage so far; the last with the finish reason."""
    if tool is not None:
        usage = gemini_usage(prompt, cached, len(pieces), thoughts)
        return [
            gemini_response(response_id, model, [{"functionCall": {"name": tool, "args": TOOL_INPUT}}], "STOP", usage)
        ]
    chunks = []
    starts = list(range(0, len(pieces), chunk_tokens)) or [0]
    for n, begin in enumerate(starts):
        end = begin + chunk_tokens
        last = n == len(starts) - 1
        usage = gemini_usage(prompt, cached, min(end, len(pieces)), thoughts)
        parts = [{"text": "".join(pieces[begin:end])}]
        chunks.append(gemini_response(response_id, model, parts, finish_reason if last else None, usage))
    return chunks
