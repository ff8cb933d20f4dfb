"""Anthropic's Messages API at ingress's edge, translated to and from the chat request ingress already serves.

Why translate here rather than pass Anthropic's body through: every request then takes the one path that is
authorized, inspected, routed, metered and billed (hold → policy → router → ``UsageRecorded``), and a Messages
client can use any model of the catalogue, not only Claude. The router already speaks Anthropic upstream (it
translates OpenAI chat ↔ Messages), so a Claude model is served natively behind the translation. What a native
passthrough would keep and this does not: ``cache_control`` hints (accepted
and not forwarded: caching changes cost, never the answer), cache *writes* in the usage (counted inside
``input_tokens``), and which stop sequence matched (OpenAI's ``finish_reason`` does not say).

Pure: no I/O. Request: :func:`parse_messages_request` → an OpenAI chat body (then
:func:`tollgate_ingress.domain.parse_chat_request`). Answer: :func:`message_from_completion`; stream:
:class:`MessageStream` turns OpenAI chunks into Anthropic's event sequence (``message_start``, ``ping``,
``content_block_start/delta/stop``, ``message_delta`` with cumulative usage, ``message_stop``; ``error``).
Errors: :func:`error_body` (``{"type": "error", "error": {"type", "message"}}`` with Anthropic's statuses).

Extended thinking rides on the chat body in OpenRouter's convention, which the router speaks to Claude (see
``tollgate_router.anthropic_thinking``): ``thinking: {type: enabled, budget_tokens}`` → ``reasoning:
{max_tokens}``; an assistant turn's ``thinking`` / ``redacted_thinking`` blocks → its ``reasoning_details``
(signatures and data kept, so a tool-use loop with thinking on continues); the answer's ``reasoning_details`` →
those blocks again, streamed as ``thinking_delta`` + ``signature_delta`` (a redacted block whole). An
OpenAI-compatible upstream's unsigned ``reasoning_content`` (DeepSeek) becomes a thinking block with an empty
signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .domain import Usage
from .errors import IngressError, InvalidRequest
from .json_depth import TOO_DEEP, nests_too_deep

__all__ = [
    "MessageStream",
    "MessagesRequest",
    "error_body",
    "error_event",
    "message_from_completion",
    "parse_messages_request",
]

#: OpenAI's finish_reason → Anthropic's stop_reason.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}

#: Ingress's status → Anthropic's error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 409: "invalid_request_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
               503: "api_error", 504: "timeout_error"}

#: ``reasoning_details`` format of Anthropic's thinking blocks (OpenRouter's name).
THINKING_FORMAT = "anthropic-claude-v1"

#: Fields translated onto the chat request.
TRANSLATED = frozenset({"model", "max_tokens", "messages", "system", "stream", "temperature", "top_p",
                        "stop_sequences", "tools", "tool_choice", "metadata", "thinking", "output_config"})

#: Fields accepted and not forwarded, because they change neither the answer nor what is billed for it
#: (prompt caching hints, Anthropic's own workspace bookkeeping).
IGNORED = frozenset({"cache_control", "service_tier", "diagnostics", "workspace_id", "user_profile_id"})

#: Everything else (``top_k``, ``container``, ``mcp_servers``, ``inference_geo``, ``speed``,
#: ``context_management``, …) has no equivalent on the routed path: refused with a 400, never dropped.


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """What the answer's translation needs to know about the request."""

    model: str
    stream: bool
    #: The OpenAI chat body the request becomes.
    chat_body: dict[str, Any]


def _bad(message: str) -> InvalidRequest:
    # Anthropic's messages name the field as a path ("messages.0.content: …"); there is no 'param' in its body.
    return InvalidRequest(message, code="invalid_request_error")


def _text_blocks(value: Any, where: str) -> str:
    """A string, or a list of text blocks joined (``system``, a ``tool_result``'s content)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(f"{where}: Input should be a string or a list of text blocks")
    texts: list[str] = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"{where}.{i}: only text blocks are supported here")
        texts.append(block["text"])
    return "\n\n".join(texts) if where == "system" else "".join(texts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source: Field required")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f"{where}.source: a base64 image needs 'media_type' and 'data'")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"{where}.source.type: Input should be 'base64' or 'url'")


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _bad(f"{where}.tool_use_id: Field required")
    content = block.get("content")
    text = "" if content is None else _text_blocks(content, f"{where}.content")
    if block.get("is_error") is True:
        # OpenAI's tool message has no error flag; the model still has to know the call failed.
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user_turn(content: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn → OpenAI messages: its tool results first (OpenAI wants them right after the
    assistant's calls), then one user message with the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        bwhere = f"{where}.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block, bwhere))
        elif kind == "tool_result":
            tools.append(_tool_result(block, bwhere))
        else:
            raise _bad(f"{bwhere}: a user turn may hold text, image and tool_result blocks (got {kind!r})")
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        bwhere = f"{where}.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad(f"{bwhere}: a tool_use block needs 'id' and 'name'")
            arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": arguments}})
        elif kind == "thinking":
            if not isinstance(block.get("thinking"), str) or not isinstance(block.get("signature"), str):
                raise _bad(f"{bwhere}: a thinking block needs 'thinking' and 'signature'")
            details.append({"type": "reasoning.text", "text": block["thinking"], "signature": block["signature"],
                            "format": THINKING_FORMAT, "index": len(details)})
        elif kind == "redacted_thinking":
            if not isinstance(block.get("data"), str):
                raise _bad(f"{bwhere}: a redacted_thinking block needs 'data'")
            details.append({"type": "reasoning.encrypted", "data": block["data"], "format": THINKING_FORMAT,
                            "index": len(details)})
        else:
            raise _bad(f"{bwhere}: an assistant turn may hold text, tool_use and thinking blocks (got {kind!r})")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if details:
        message["reasoning_details"] = details
    return [message] if texts or calls or details else []


def _thinking(thinking: Any) -> dict[str, Any] | None:
    """The chat body's ``reasoning`` for Anthropic's ``thinking`` (``None``: off). Anthropic's own rules (a budget
    of at least 1024, below ``max_tokens``) are the upstream's to enforce: its 400 reaches the client as is."""
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise _bad("thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'")
    if thinking["type"] == "disabled":
        return None
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise _bad("thinking.enabled.budget_tokens: Field required (an integer >= 1024)")
    return {"max_tokens": budget}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools: Input should be a list")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"tools.{i}.name: Field required")
        if tool.get("type") not in (None, "custom"):
            raise _bad(f"tools.{i}.type: server tools ({tool['type']!r}) are not supported by the gateway")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema: Field required")
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    """Set ``tool_choice`` and ``parallel_tool_calls`` on the chat ``body``."""
    if not isinstance(choice, dict):
        raise _bad("tool_choice: Input should be an object")
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice.type: Input should be 'auto', 'any', 'tool' (with a name) or 'none'")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        body["parallel_tool_calls"] = False


def _output_config(config: Any, body: dict[str, Any]) -> None:
    """``output_config.format`` (structured outputs) → ``response_format`` json_schema, strict."""
    if not isinstance(config, dict):
        raise _bad("output_config: Input should be an object")
    if config.get("effort") is not None:
        raise _bad("output_config.effort: not supported by the gateway")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _bad("output_config.format: Input should be {\"type\": \"json_schema\", \"schema\": {...}}")
    body["response_format"] = {"type": "json_schema",
                               "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def _number(body: dict[str, Any], name: str, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise _bad(f"{name}: Input should be a number between 0 and {high:g}")
    return value


def parse_messages_request(raw: bytes, *, counting: bool = False) -> MessagesRequest:
    """Validate a ``POST /v1/messages`` body and translate it (see the module docstring). 400 on anything wrong.

    ``counting``: a ``count_tokens`` body, which has no ``max_tokens``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("There was an error parsing the body of your request: it is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    if nests_too_deep(body):
        raise _bad(TOO_DEEP + ".")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model: Field required")
    max_tokens = body.get("max_tokens", 1 if counting else None)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: Field required (an integer >= 1)")
    for name in body:
        if name not in TRANSLATED and name not in IGNORED and body[name] is not None:
            raise _bad(f"{name}: not supported by the gateway (it has no equivalent on the routed path)")
    reasoning = _thinking(body.get("thinking"))

    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system")
        if text:
            chat.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _bad(f"{where}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise _bad(f"{where}.content: Input should be a string or a list of blocks")
        if message["role"] == "user":
            chat.extend(_user_turn(content, f"{where}.content"))
        else:
            chat.extend(_assistant_turn(content, f"{where}.content"))
    if not any(m["role"] != "system" for m in chat):
        raise _bad("messages: at least one message with content is required")

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean")
    out: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    if stream:
        out["stream"] = True
    if reasoning is not None:
        out["reasoning"] = reasoning
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = _number(body, name, high)
        if value is not None:
            out[name] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: Input should be a list of strings")
        if stops:
            out["stop"] = stops
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    if body.get("output_config") is not None:
        _output_config(body["output_config"], out)
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata: Input should be an object")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise _bad("metadata.user_id: Input should be a string")
        if user_id:
            out["user"] = user_id
    return MessagesRequest(model=model, stream=bool(stream), chat_body=out)


# ---- the answer ---------------------------------------------------------------------------------------------


def message_id(upstream_id: object, fallback: str) -> str:
    """Anthropic's ids start with ``msg_``; an upstream's other id is kept after it, so it stays traceable."""
    value = str(upstream_id or "") or fallback
    if value.startswith("msg_"):
        return value
    return "msg_" + value.removeprefix("chatcmpl-")


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Anthropic's convention: ``input_tokens`` excludes cache reads and writes (OpenAI's ``prompt_tokens`` includes
    them)."""
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_prompt_tokens - usage.cache_write_tokens, 0),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }


def usage_of(openai_usage: Any) -> Usage:
    """The OpenAI ``usage`` object of an answer as :class:`Usage`."""
    if not isinstance(openai_usage, dict):
        return Usage()

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    details = openai_usage.get("prompt_tokens_details")
    completion_details = openai_usage.get("completion_tokens_details")
    prompt, completion = count(openai_usage.get("prompt_tokens")), count(openai_usage.get("completion_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_prompt_tokens=count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        reasoning_tokens=count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict)
        else 0,
    )


def _tool_input(arguments: Any) -> Any:
    if not isinstance(arguments, str) or not arguments:
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        # A model's malformed arguments: passed on as the text they are rather than lost.
        return {"_arguments": arguments}


def message_from_completion(
    completion: bytes, request: MessagesRequest, fallback_id: str, usage: Usage | None = None
) -> bytes:
    """An OpenAI ``chat.completion`` body as Anthropic's ``message`` object; ``usage``: what was billed (the
    router's exact count), else the body's own."""
    body = orjson.loads(completion)
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = _thinking_blocks(message)
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                        "input": _tool_input(function.get("arguments"))})
    finish = choice.get("finish_reason")
    return orjson.dumps({
        "id": message_id(body.get("id"), fallback_id),
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model") or request.model),
        "content": content,
        "stop_reason": STOP_REASONS.get(str(finish), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(usage or usage_of(body.get("usage"))),
    })


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An answer's thinking as Anthropic's blocks: signed ``reasoning_details`` (a Claude upstream), else
    DeepSeek-style ``reasoning_content`` from an OpenAI-compatible upstream (unsigned: there is no signature)."""
    details = message.get("reasoning_details")
    if isinstance(details, list) and details:
        blocks: list[dict[str, Any]] = []
        for detail in details:
            if not isinstance(detail, dict):
                continue
            if detail.get("type") == "reasoning.text":
                blocks.append({"type": "thinking", "thinking": str(detail.get("text") or ""),
                               "signature": str(detail.get("signature") or "")})
            elif detail.get("type") == "reasoning.encrypted":
                blocks.append({"type": "redacted_thinking", "data": str(detail.get("data") or "")})
        return blocks
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


@dataclass(slots=True)
class MessageStream:
    """OpenAI ``chat.completion.chunk``\\ s in, Anthropic's stream events out, for one streamed message.

    ``message_start`` carries the tokenizer's count of the prompt (what the hold was sized on; the upstream's
    count only arrives at the end), and ``message_delta`` the exact, cumulative usage, which the SDKs take as
    final. Only choice 0 is translated (a Messages request has no ``n``)."""

    model: str
    fallback_id: str
    estimated_input_tokens: int
    started: bool = False
    #: The open content block: ("text" | "thinking" | "tool_use", its index), or None.
    _open: tuple[str, int] | None = None
    _next_index: int = 0
    _tool_blocks: dict[int, int] = field(default_factory=dict)  # OpenAI tool_calls index → block index
    _stop_reason: str = "end_turn"

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id"), self.fallback_id),
            "type": "message",
            "role": "assistant",
            "model": str(chunk.get("model") or self.model),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.estimated_input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1},
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        _kind, index = self._open
        self._open = None
        return _event("content_block_stop", {"index": index})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        index = self._next_index
        self._next_index += 1
        self._open = (kind, index)
        return out + _event("content_block_start", {"index": index, "content_block": block})

    def _delta(self, kind: str, delta: dict[str, Any], block: dict[str, Any]) -> bytes:
        out = b""
        if self._open is None or self._open[0] != kind:
            out = self._open_block(kind, block)
        assert self._open is not None
        return out + _event("content_block_delta", {"index": self._open[1], "delta": delta})

    def chunk(self, raw: bytes) -> bytes:
        """The events for one OpenAI chunk (possibly none)."""
        try:
            chunk = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        out = b"" if self.started else self._start(chunk)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            details = delta.get("reasoning_details")
            if isinstance(details, list) and details:
                for detail in details:
                    if isinstance(detail, dict):
                        out += self._thinking_detail(detail)
            else:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(reasoning, str) and reasoning:
                    out += self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning},
                                       {"type": "thinking", "thinking": "", "signature": ""})
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._delta("text", {"type": "text_delta", "text": text}, {"type": "text", "text": ""})
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            finish = choice.get("finish_reason")
            if finish:
                self._stop_reason = STOP_REASONS.get(str(finish), "end_turn")
        return out

    def _thinking_detail(self, detail: dict[str, Any]) -> bytes:
        """One streamed ``reasoning_details`` piece: text → ``thinking_delta``, a signature → ``signature_delta``
        on the same block, encrypted data → a whole ``redacted_thinking`` block."""
        block = {"type": "thinking", "thinking": "", "signature": ""}
        out = b""
        if detail.get("type") == "reasoning.encrypted":
            out = self._open_block("redacted_thinking", {"type": "redacted_thinking",
                                                         "data": str(detail.get("data") or "")})
            return out + self._close()
        if detail.get("type") != "reasoning.text":
            return b""
        text = detail.get("text")
        if isinstance(text, str) and text:
            out += self._delta("thinking", {"type": "thinking_delta", "thinking": text}, block)
        signature = detail.get("signature")
        if isinstance(signature, str) and signature:
            out += self._delta("thinking", {"type": "signature_delta", "signature": signature}, block)
        return out

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        position = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        if position not in self._tool_blocks:
            block = {"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                     "input": {}}
            out = self._open_block("tool_use", block)
            assert self._open is not None
            self._tool_blocks[position] = self._open[1]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            index = self._tool_blocks[position]
            if self._open is None or self._open[1] != index:
                return out  # arguments for a block already closed: Anthropic cannot reopen one
            out += _event("content_block_delta",
                          {"index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}})
        return out

    def end(self, usage: Usage, first: dict[str, Any] | None = None) -> bytes:
        """The closing events, with the exact usage (cumulative, as Anthropic's ``message_delta``)."""
        out = b"" if self.started else self._start(first or {})
        out += self._close()
        out += _event("message_delta", {"delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                                        "usage": anthropic_usage(usage)})
        return out + _event("message_stop", {})


def error_message(error: IngressError) -> str:
    """The message in Anthropic's convention: its error JSON has no ``param``, the field leads the message
    (``"max_tokens: Field required"``); an error that names its field elsewhere gets that prefix."""
    if error.param and error.param not in error.message:
        return f"{error.param}: {error.message}"
    return error.message


def error_body(error: IngressError) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}``: the body the anthropic SDK parses into its errors."""
    kind = ERROR_TYPES.get(error.status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error_message(error)}})


def error_event(error: IngressError) -> bytes:
    """An error met after the stream started: Anthropic's ``error`` event."""
    kind = ERROR_TYPES.get(error.status, "api_error")
    return _event("error", {"error": {"type": kind, "message": error_message(error)}})
