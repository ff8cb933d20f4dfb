"""Server-sent events for a streamed chat completion, in OpenAI's framing.

``data: <chunk json>\\n\\n`` per chunk; when the client asked for ``stream_options.include_usage``, one more chunk
with ``choices: []`` and the exact usage (same id, model and created as the others); then ``data: [DONE]\\n\\n``.
An error after the first chunk becomes ``data: {"error": {...}}\\n\\n`` and the stream ends.

The response also watches for the client going away: it then tells the session (whose own task keeps draining
the router so the usage is still billed, as CLIENT_CANCELLED) and stops writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .domain import StreamMeta, usage_chunk
from .metrics import Metrics
from .streaming import StreamEnded, StreamFailed, StreamItem, StreamSession

__all__ = ["SseResponse"]

_DISCONNECTED = object()
_DONE = b"data: [DONE]\n\n"


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, session: StreamSession, first: StreamItem, metrics: Metrics) -> None:
        super().__init__(
            content=None,
            status_code=200,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type=self.media_type,
        )
        # No content-length: the body is chunked.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.session = session
        self.first = first
        self.metrics = metrics
        self._finished = False
        self._meta: StreamMeta | None = None

    def _frame(self, item: StreamItem) -> tuple[bytes, bool]:
        """The bytes for one queue item, and whether the stream ends with it."""
        if isinstance(item, bytes):
            if self._meta is None:
                self._meta = StreamMeta.from_chunk(
                    item, fallback_id=self._fallback_id(), fallback_model=self.session.prepared.request.model
                )
            return b"data: " + item + b"\n\n", False
        if isinstance(item, StreamEnded):
            out = b""
            if self.session.prepared.request.include_usage:
                meta = self._meta or StreamMeta(
                    id=self._fallback_id(), model=self.session.prepared.request.model, created=int(time.time())
                )
                out = b"data: " + usage_chunk(meta, item.usage) + b"\n\n"
            return out + _DONE, True
        if isinstance(item, StreamFailed):
            return b"data: " + item.error.body() + b"\n\n", True
        raise TypeError(f"unexpected stream item {item!r}")  # pragma: no cover

    def _fallback_id(self) -> str:
        return "chatcmpl-" + self.session.prepared.request_id

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finished:
                    self.session.client_disconnected()
                    self.metrics.stream_client_disconnects.inc()
                    self.session.queue.put_nowait(_DISCONNECTED)  # type: ignore[arg-type]
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        watcher = asyncio.create_task(self._watch(receive))
        queue = self.session.queue
        item: Any = self.first
        try:
            while True:
                body = bytearray()
                done = False
                # Coalesce whatever is already queued into one write: fewer syscalls under load.
                while True:
                    if item is _DISCONNECTED:
                        return
                    frame, done = self._frame(item)
                    body += frame
                    if done or queue.empty():
                        break
                    item = queue.get_nowait()
                if done:
                    self._finished = True
                try:
                    await send({"type": "http.response.body", "body": bytes(body), "more_body": not done})
                except OSError:  # ASGI 2.4 servers raise on a closed connection
                    self.session.client_disconnected()
                    self.metrics.stream_client_disconnects.inc()
                    return
                if done:
                    return
                item = await queue.get()
        except asyncio.CancelledError:
            self.session.client_disconnected()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
