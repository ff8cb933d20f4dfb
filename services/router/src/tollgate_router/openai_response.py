"""Building OpenAI's answers from a translated one: ``chat.completion``, ``chat.completion.chunk`` and ``usage``.

Used by the adapters whose provider speaks another wire format (Anthropic, Gemini); the OpenAI-compatible adapter
passes the provider's own bytes through.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .domain import Completion, Route, Usage

__all__ = ["ChunkWriter", "ToolCall", "chunk", "completion_body", "translated_completion", "usage_json"]


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
    reasoning_details: list[dict[str, Any]] | None = None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning_details:  # OpenRouter's convention (see anthropic_thinking)
        texts = [d["text"] for d in reasoning_details if d.get("type") == "reasoning.text"]
        message["reasoning"] = "".join(texts) or None
        message["reasoning_details"] = reasoning_details
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
    reasoning_details: list[dict[str, Any]] | None = None,
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
            reasoning_details=reasoning_details,
        ),
        usage=usage,
        provider=route.provider.name,
        upstream_model=route.upstream_model,
        upstream_request_id=upstream_request_id,
    )


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
