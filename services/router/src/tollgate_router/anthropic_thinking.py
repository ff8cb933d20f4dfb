"""Anthropic's extended thinking on the OpenAI chat wire, in OpenRouter's convention.

OpenAI's chat format has no thinking blocks, and a Claude conversation that uses tools with thinking on must send
each earlier turn's thinking back *with its signature* (Anthropic checks it). OpenRouter's chat API carries them as
``reasoning`` (the request's thinking budget, ``{"max_tokens": N}``), ``message.reasoning`` (the text) and
``message.reasoning_details`` (each block: ``{"type": "reasoning.text", "text", "signature"}`` or
``{"type": "reasoning.encrypted", "data"}`` for a ``redacted_thinking`` block, with ``format`` and ``index``); a
stream sends the same details piece by piece in ``delta.reasoning_details``. The router uses that convention, so
any OpenAI client (and ingress's /v1/messages) gets Claude's thinking and can hand it back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest

__all__ = ["FORMAT", "block_detail", "detail_blocks", "thinking_param"]

FORMAT = "anthropic-claude-v1"


def thinking_param(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """Anthropic's ``thinking`` for the request's ``reasoning`` (``None``: thinking off)."""
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise InvalidRequest("Invalid 'reasoning': expected an object such as {\"max_tokens\": 2048}.")
    if reasoning.get("enabled") is False:
        return None
    budget = reasoning.get("max_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidRequest("Invalid 'reasoning.max_tokens': Anthropic models need the thinking budget as a "
                             "positive integer (reasoning.effort alone is not supported).")
    return {"type": "enabled", "budget_tokens": budget}


def detail_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's ``reasoning_details`` as the thinking blocks Anthropic wants first in that turn."""
    details = message.get("reasoning_details")
    if details is None:
        return []
    if not isinstance(details, list):
        raise InvalidRequest(f"Invalid '{where}.reasoning_details': expected an array.")
    blocks: list[dict[str, Any]] = []
    for index, detail in enumerate(details):
        kind = detail.get("type") if isinstance(detail, dict) else None
        if kind == "reasoning.text" and isinstance(detail.get("text"), str):
            blocks.append({"type": "thinking", "thinking": detail["text"],
                           "signature": str(detail.get("signature") or "")})
        elif kind == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
        elif kind == "reasoning.summary":
            continue  # another provider's summary: nothing Anthropic can verify
        else:
            raise InvalidRequest(f"Invalid '{where}.reasoning_details[{index}]': expected a reasoning.text or "
                                 "reasoning.encrypted detail.")
    return blocks


def block_detail(block: Mapping[str, Any], index: int) -> dict[str, Any] | None:
    """The ``reasoning_details`` entry of one of Anthropic's content blocks (``None``: not a thinking block)."""
    if block.get("type") == "thinking":
        return {"type": "reasoning.text", "text": str(block.get("thinking") or ""),
                "signature": str(block.get("signature") or ""), "format": FORMAT, "index": index}
    if block.get("type") == "redacted_thinking":
        return {"type": "reasoning.encrypted", "data": str(block.get("data") or ""), "format": FORMAT, "index": index}
    return None
