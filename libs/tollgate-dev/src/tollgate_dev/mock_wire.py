"""The Anthropic Messages and Gemini generateContent shapes the mock upstream serves. DEVELOPMENT AND TESTS ONLY.

Pure functions (no I/O): request validation in each provider's terms, a deterministic prompt-token count, and
the bodies and SSE events of an answer, shaped as the real APIs send them:

- Anthropic: ``message`` objects, ``usage`` with ``input_tokens`` EXCLUDING ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``, and the stream ``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``, ``message_delta``
  (``stop_reason``, cumulative ``usage.output_tokens``), ``message_stop``; errors as ``{"type": "error",
  "error": {"type", "message"}}``. Extended thinking (``thinking: {type: enabled, budget_tokens}``, budget ≥ 1024
  and below ``max_tokens``, ``temperature`` only 1): a ``thinking`` block first (fixed text, a signature the
  mock checks when the block comes back in a later assistant turn, as Anthropic does), streamed as
  ``thinking_delta``s then one ``signature_delta``; its tokens are inside ``output_tokens``. A prompt holding
  Anthropic's documented test string :data:`REDACTED_THINKING_TRIGGER` gets a ``redacted_thinking`` block instead.
- Gemini: ``GenerateContentResponse`` with ``candidates``, ``usageMetadata`` (``promptTokenCount`` INCLUDING
  ``cachedContentTokenCount``; ``thoughtsTokenCount`` apart from ``candidatesTokenCount``), ``modelVersion``,
  ``responseId``; errors as ``{"error": {"code", "message", "status"}}``.

Prompt tokens are counted like the OpenAI side (cl100k_base, 3 per turn, 3 for the reply priming, system text
and non-text blocks as compact JSON), so one prompt costs about the same in every format.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from .mock_tokens import content_tokens, count_tokens

__all__ = [
    "REDACTED_THINKING_TRIGGER",
    "THINKING_TEXT",
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
    "thinking_block",
    "thinking_signature",
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


#: The thinking the mock "does" (fixed, never derived from the prompt).
THINKING_TEXT = "The user greets me. A short, friendly answer is enough; nothing needs a tool."
#: Anthropic's documented string that makes a model answer with a redacted_thinking block (for client tests).
REDACTED_THINKING_TRIGGER = "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7398A98432ECCCE4C1253"


def thinking_signature(text: str) -> str:
    """The mock's signature of a thinking text (opaque base64, as Anthropic's; checked on the way back)."""
    return base64.b64encode(hashlib.sha256(b"mock-thinking:" + text.encode()).digest()).decode()


def thinking_block(body: dict[str, Any]) -> dict[str, Any] | None:
    """The block the answer starts with when the request turned thinking on (validated already)."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    if REDACTED_THINKING_TRIGGER in _compact(body.get("messages")):
        data = base64.b64encode(hashlib.sha256(b"mock-redacted").digest() * 2).decode()
        return {"type": "redacted_thinking", "data": data}
    return {"type": "thinking", "thinking": THINKING_TEXT, "signature": thinking_signature(THINKING_TEXT)}


def _validate_thinking(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        return "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'"
    if thinking["type"] == "disabled":
        return None
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int):
        return "thinking.enabled.budget_tokens: Field required"
    if budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= body["max_tokens"]:
        return ("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
                "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size")
    if body.get("temperature") not in (None, 1):
        return "`temperature` may only be set to 1 when thinking is enabled or in interleaved thinking mode."
    return None


def _validate_thinking_history(messages: list[Any]) -> str | None:
    for index, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        for position, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "thinking":
                continue
            if block.get("signature") != thinking_signature(str(block.get("thinking"))):
                return f"messages.{index}.content.{position}: Invalid `signature` in `thinking` block"
    return None


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
    return _validate_thinking(body) or _validate_thinking_history(messages)


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
    if kind == "image" or kind in ("thinking", "redacted_thinking"):
        return 0  # earlier turns' thinking is stripped from the context, not billed as input
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
    message_id: str,
    model: str,
    text: str | None,
    tool: str | None,
    stop_reason: str,
    usage: dict[str, Any],
    thinking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [thinking] if thinking is not None else []
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
    thinking: dict[str, Any] | None = None,
) -> list[bytes]:
    """The whole event sequence of a streamed message (``usage`` is the final one)."""
    start_usage = {**usage, "output_tokens": 1}
    start = anthropic_message(message_id, model, None, None, "", start_usage)
    start["stop_reason"] = None
    events = [_sse("message_start", {"type": "message_start", "message": start})]
    index = 0

    def block_start(block: dict[str, Any]) -> bytes:
        return _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})

    def block_delta(delta: dict[str, Any]) -> bytes:
        return _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    if thinking is not None and thinking["type"] == "redacted_thinking":
        events.append(block_start(thinking))
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    elif thinking is not None:
        events.append(block_start({"type": "thinking", "thinking": "", "signature": ""}))
        text = thinking["thinking"]
        for begin in range(0, len(text), 24):
            events.append(block_delta({"type": "thinking_delta", "thinking": text[begin : begin + 24]}))
        events.append(block_delta({"type": "signature_delta", "signature": thinking["signature"]}))
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if tool is None:
        events.append(block_start({"type": "text", "text": ""}))
        events.append(_sse("ping", {"type": "ping"}))
        for begin in range(0, len(pieces), chunk_tokens):
            events.append(block_delta({"type": "text_delta", "text": "".join(pieces[begin : begin + chunk_tokens])}))
    else:
        events.append(block_start({"type": "tool_use", "id": "toolu_" + message_id[4:], "name": tool, "input": {}}))
        arguments = _compact(TOOL_INPUT)
        for begin in range(0, len(arguments), 8):
            events.append(block_delta({"type": "input_json_delta", "partial_json": arguments[begin : begin + 8]}))
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
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
