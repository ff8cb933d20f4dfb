"""The mock's Anthropic ``POST /v1/messages``. DEVELOPMENT ONLY.

``anthropic-version`` header required; streaming with the real event sequence (shapes in
:mod:`tollgate_dev.mock_wire`); ``input_tokens`` excludes cache reads and writes, as Anthropic's; a forced
``tool_choice`` gets a ``tool_use``; ``thinking`` gets a thinking block billed inside ``output_tokens``. Faults by
header or armed rule only (a native format takes no body knobs); an overload met mid-stream is an ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from functools import partial
from typing import Any

from aiohttp import web

from . import mock_wire as wire
from .mock_serving import TIMEOUT_FAULT_SECONDS, BadRequest, MockState, dumps, knob, write_events
from .mock_tokens import count_tokens

__all__ = ["routes"]


def routes(mock: MockState) -> list[web.RouteDef]:
    return [web.post("/v1/messages", partial(messages, mock))]


async def messages(mock: MockState, request: web.Request) -> web.StreamResponse:
    record = mock.record(request, "anthropic", "x-api-key", "Authorization")
    return await mock.recorded(record, _serve(mock, request, record))


async def _serve(mock: MockState, request: web.Request, record: dict[str, Any]) -> web.StreamResponse:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        headers = {"request-id": record["id"], **(headers or {})}
        body = dumps(wire.anthropic_error(status, message))
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    try:
        body = json.loads(await request.read())
    except ValueError:
        return error(400, "There was an error parsing the body of your request.")
    record["body"] = body
    if isinstance(body, dict):
        record["model"] = body.get("model") if isinstance(body.get("model"), str) else None
        record["stream"] = body.get("stream") is True
    if not request.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    try:
        fault, retry_after = await mock.admit(request, body, record, wire.validate_anthropic)
    except BadRequest as exc:
        return error(400, exc.message)
    if fault == "500":
        return error(500, "Internal server error (mock fault)")
    if fault == "overloaded" and not record["stream"]:
        return error(529, "Overloaded (mock fault)")
    if fault == "429":
        return error(
            429, "Number of requests has exceeded your rate limit (mock fault)", {"retry-after": str(retry_after)}
        )
    if fault == "401":
        return error(401, "invalid x-api-key (mock fault)")
    if fault == "timeout":
        await asyncio.sleep(TIMEOUT_FAULT_SECONDS)

    prompt = wire.anthropic_prompt_tokens(body)
    cached = min(mock.cached_tokens, prompt)
    written = min(mock.cache_write_tokens, prompt - cached)
    tool = wire.anthropic_tool(body)
    pieces, finish = mock.reply.cut(body["max_tokens"])
    if tool is not None:
        pieces, stop_reason = (), "tool_use"
        output = count_tokens(json.dumps(wire.TOOL_INPUT, separators=(",", ":")))
    else:
        stop_reason = "max_tokens" if finish == "length" else "end_turn"
        output = len(pieces)
    thinking = wire.thinking_block(body)
    if thinking is not None:  # thinking tokens are billed as output, inside output_tokens
        output += count_tokens(wire.THINKING_TEXT if thinking["type"] == "thinking" else thinking["data"])
    usage = {
        "input_tokens": prompt - cached - written,  # Anthropic's input_tokens excludes cache reads and writes
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": output + mock.reasoning_tokens,
    }
    record["usage"] = usage
    message_id = "msg_" + secrets.token_hex(12)
    headers = {"request-id": record["id"]}
    if not record["stream"]:
        text = None if tool is not None else "".join(pieces)
        message = wire.anthropic_message(message_id, body["model"], text, tool, stop_reason, usage, thinking)
        return web.Response(body=dumps(message), content_type="application/json", headers=headers)
    events = wire.anthropic_events(
        message_id, body["model"], pieces, mock.chunk_tokens, tool, stop_reason, usage, thinking
    )
    # a cut stream stops after the first content delta (message_start, block start, ping, delta)
    if fault == "overloaded":  # Anthropic reports an overload met mid-stream as an error event
        overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (mock fault)"}}
        events = [*events[:4], b"event: error\ndata: " + dumps(overloaded) + b"\n\n"]
    chunk_delay_ms = knob(request, None, "X-Mock-Chunk-Delay-Ms", "")
    return await write_events(request, headers, events, 4 if fault == "disconnect" else None, chunk_delay_ms)
