"""What every wire format of the mock upstream shares: its state, the call record, fault knobs, the SSE writer.

DEVELOPMENT ONLY (see :mod:`tollgate_dev.mock_upstream`). Each wire format's handlers live in their own module
(``mock_openai_chat``, ``mock_openai_embeddings``, ``mock_anthropic``, ``mock_gemini``) and take a
:class:`MockState`; this module is the one place for what they have in common, so a new format adds a module and
one line in :class:`tollgate_dev.mock_upstream.MockUpstream`, never a copy of the fault or record plumbing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .mock_faults import FAULTS, FaultRule, Faults
from .mock_tokens import Reply

__all__ = [
    "TIMEOUT_FAULT_SECONDS",
    "BadRequest",
    "MockState",
    "dumps",
    "now_iso",
    "openai_error",
    "write_events",
]

TIMEOUT_FAULT_SECONDS = 30.0


class BadRequest(Exception):
    """A request the mock answers with a 400 in the caller's wire format; ``param`` names the field (OpenAI)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def dumps(value: Any) -> bytes:
    """Compact JSON, as the providers write it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def openai_error(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's JSON shape (also the mock's own admin endpoints' shape)."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=dumps(body), content_type="application/json", headers=headers)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MockState:
    """The mock's state (record, armed faults, usage knobs, canned reply) and the per-call steps on it."""

    def __init__(self, *, reply: str, chunk_tokens: int, max_calls: int) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1")
        #: Prompt tokens every answer reports as read from the provider's cache (capped at the prompt), and
        #: reasoning tokens it reports on top of the reply: each format says so in its own fields.
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        #: Anthropic only: prompt tokens reported as written to the cache (capped at the prompt minus the reads).
        self.cache_write_tokens = 0
        self.faults = Faults()
        self.reply = Reply.of(reply)
        self.chunk_tokens = chunk_tokens
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A snapshot of the record, oldest first."""
        return list(self._calls)

    def clear(self) -> None:
        """Forget the record, the armed faults and the usage knobs."""
        self._calls.clear()
        self.faults.clear()
        self.cached_tokens = self.reasoning_tokens = self.cache_write_tokens = 0

    def record(self, request: web.Request, fmt: str, *key_headers: str) -> dict[str, Any]:
        """Start this call's record (appended at once, so a call that hangs or fails is recorded too)."""
        record: dict[str, Any] = {
            "id": "req_" + secrets.token_hex(12),
            "received_at": now_iso(),
            "format": fmt,
            "path": request.path,
            "model": None,
            "stream": False,
            "body": None,
            "usage": None,
            "status": None,
            "authorization_present": any(h in request.headers for h in key_headers) or "key" in request.query,
            "fault": None,
            "latency_ms": 0,
        }
        self._calls.append(record)
        return record

    @staticmethod
    async def delay(record: dict[str, Any], latency_ms: int) -> None:
        """Wait the injected latency before answering, and note it in the record."""
        record["latency_ms"] = latency_ms
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)

    @staticmethod
    async def recorded(record: dict[str, Any], serve: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        """Await ``serve`` and note its status in the record (499 when the caller went away first)."""
        try:
            response: web.StreamResponse = await serve
            record["status"] = response.status
            return response
        except asyncio.CancelledError:
            record["status"] = 499  # the caller went away first (nginx's "client closed request")
            raise

    def fault(
        self, request: web.Request, body: Any, record: dict[str, Any], field: str | None
    ) -> tuple[str | None, int, int]:
        """The fault, its Retry-After and extra latency for this call: the header (or body field), else a rule."""
        fault: Any = request.headers.get("X-Mock-Fault")
        if fault is None and field and isinstance(body, dict):
            fault = body.get(field)
        retry_after, latency_ms = 1, 0
        if fault is None:
            rule: FaultRule | None = self.faults.take(record["model"], record["format"])
            if rule is not None:
                fault, retry_after, latency_ms = rule.fault, rule.retry_after, rule.latency_ms
        record["fault"] = fault
        if fault is not None and str(fault) not in FAULTS:
            raise BadRequest(f"mock_fault must be one of {', '.join(FAULTS)}", "mock_fault")
        return (str(fault) if fault is not None else None), retry_after, latency_ms

    async def admit(
        self, request: web.Request, body: Any, record: dict[str, Any], problem_of: Callable[[Any], str | None]
    ) -> tuple[str | None, int]:
        """A provider-native call's fault and Retry-After, once its latency is waited; a bad knob or body raises.

        Native formats take the knobs by header only; ``problem_of`` is the format's own body check.
        """
        fault, retry_after, latency_ms = self.fault(request, body, record, None)
        latency_ms += knob(request, body, "X-Mock-Latency-Ms", "")
        problem = problem_of(body)
        if problem:
            raise BadRequest(problem)
        await self.delay(record, latency_ms)
        return fault, retry_after


def knob(request: web.Request, body: Any, header: str, field: str) -> int:
    """A non-negative integer knob from ``header``, else the body's ``field`` (when given); 0 when absent."""
    value: Any = request.headers.get(header)
    if value is None and field and isinstance(body, dict):
        value = body.get(field)
    if value is None:
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{field} must be a non-negative integer", field) from None
    if number < 0:
        raise BadRequest(f"{field} must be a non-negative integer", field)
    return number


async def write_events(
    request: web.Request,
    headers: dict[str, str],
    events: list[bytes],
    cut_after: int | None,
    chunk_delay_ms: int,
) -> web.StreamResponse:
    """Stream ``events``; ``cut_after``: close the connection after that many, as a broken upstream does.

    Without a chunk delay the events go out in one write: the benchmark's static upstream must be cheap.
    """
    response = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    if cut_after is not None:
        await response.write(b"".join(events[:cut_after]))
        assert request.transport is not None
        request.transport.close()
        response.force_close()
        return response
    if chunk_delay_ms:
        for event in events:
            await response.write(event)
            await asyncio.sleep(chunk_delay_ms / 1000)
    else:
        await response.write(b"".join(events))
    await response.write_eof()
    return response
