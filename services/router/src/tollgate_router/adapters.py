"""The one boundary between the router and a provider's wire format.

An adapter takes an OpenAI-format request body and a route, speaks the provider's protocol, and answers in
OpenAI format with exact usage, raising only :mod:`tollgate_router.errors`. Retries and fallback (a later step)
wrap this interface in the application layer, so each adapter stays a plain translator.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from .domain import Completion, Route, StreamEnded

__all__ = ["ProviderAdapter", "StreamEvent"]

#: A chat.completion.chunk (JSON bytes, without ``usage``) or the final :class:`StreamEnded`.
StreamEvent = bytes | StreamEnded


class ProviderAdapter(Protocol):
    async def complete(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        """One non-streaming call; ``body`` already names the upstream model."""
        ...

    def stream(
        self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """A streaming call: chunks, then exactly one :class:`StreamEnded`.

        Errors the upstream reports before its first chunk are raised by the first ``__anext__``, before any
        event is yielded, so the caller can still answer with a plain error status.
        """
        ...
