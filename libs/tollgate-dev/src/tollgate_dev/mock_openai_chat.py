"""The mock's OpenAI Chat Completions, and Azure OpenAI's deployment-scoped variant of it. DEVELOPMENT ONLY.

- ``POST /v1/chat/completions``: ``prompt_tokens`` by OpenAI's chat formula (:func:`count_prompt_tokens`),
  the canned reply cut to ``max_completion_tokens``/``max_tokens`` (``finish_reason`` ``"length"`` then), times
  ``n``; a limit above the model's most (:data:`MAX_COMPLETION_TOKENS`) is OpenAI's 400 ``max_tokens is too
  large`` with ``param``. ``logprobs``/``top_logprobs`` in OpenAI's shape (:mod:`tollgate_dev.mock_logprobs`).
  Streaming writes ``chat.completion.chunk`` events and, with ``stream_options.include_usage``, the usage chunk.
- ``POST /openai/deployments/{d}/chat/completions?api-version=…``: the same, the deployment standing in for
  ``model``; 404 without ``api-version``, as Azure; the key in ``api-key``.

The fault and latency knobs come by header or, because the router forwards bodies but not client headers, by
the same-named body field (``mock_fault``, ``mock_latency_ms``, ``mock_chunk_delay_ms``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from functools import partial
from typing import Any

from aiohttp import web

from . import mock_logprobs
from .mock_serving import TIMEOUT_FAULT_SECONDS, BadRequest, MockState, dumps, knob, openai_error, write_events
from .mock_tokens import count_prompt_tokens

__all__ = ["MAX_COMPLETION_TOKENS", "MAX_N", "SYSTEM_FINGERPRINT", "routes"]

#: The most completion tokens a model takes (OpenAI answers more with a 400 naming the param); others: no limit.
MAX_COMPLETION_TOKENS = {"gpt-4o-mini": 16384, "gpt-4o": 16384, "deepseek-chat": 8192}
SYSTEM_FINGERPRINT = "fp_tollgate_mock"
MAX_N = 16


def routes(mock: MockState) -> list[web.RouteDef]:
    return [
        web.post("/v1/chat/completions", partial(chat_completions, mock)),
        web.post("/openai/deployments/{deployment}/chat/completions", partial(azure_chat_completions, mock)),
    ]


async def chat_completions(mock: MockState, request: web.Request) -> web.StreamResponse:
    record = mock.record(request, "openai", "Authorization")
    return await mock.recorded(record, _serve(mock, request, record))


async def azure_chat_completions(mock: MockState, request: web.Request) -> web.StreamResponse:
    """Azure OpenAI: the deployment in the path, a required ``api-version``, the key in ``api-key``."""
    record = mock.record(request, "azure", "api-key")
    if not request.query.get("api-version"):
        record["status"] = 404
        return openai_error(404, "Resource not found", "invalid_request_error", code="404")
    deployment = request.match_info["deployment"]
    return await mock.recorded(record, _serve(mock, request, record, deployment=deployment))


def _optional_int(body: dict[str, Any], key: str, *, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadRequest(f"Invalid '{key}': expected an integer >= {minimum}, got {value!r}.", key)
    return value


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("Missing required parameter: 'messages'.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"Invalid 'messages[{index}]': expected an object with a 'role'.", f"messages[{index}]")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("Invalid 'stream': expected a boolean.", "stream")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")


async def _serve(
    mock: MockState, request: web.Request, record: dict[str, Any], deployment: str | None = None
) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return openai_error(
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
        fault, retry_after, rule_latency_ms = mock.fault(request, body, record, "mock_fault")
        latency_ms = knob(request, body, "X-Mock-Latency-Ms", "mock_latency_ms") + rule_latency_ms
        chunk_delay_ms = knob(request, body, "X-Mock-Chunk-Delay-Ms", "mock_chunk_delay_ms")
        _validate(body)
        limit = _optional_int(body, "max_completion_tokens", minimum=1)
        limit_param = "max_completion_tokens"
        if limit is None:
            limit = _optional_int(body, "max_tokens", minimum=1)
            limit_param = "max_tokens"
        most = MAX_COMPLETION_TOKENS.get(str(body["model"]))
        if limit is not None and most is not None and limit > most:
            raise BadRequest(
                f"{limit_param} is too large: {limit}. This model supports at most {most} completion tokens, "
                f"whereas you provided {limit}.",
                limit_param,
            )
        n = _optional_int(body, "n", minimum=1) or 1
        if n > MAX_N:
            raise BadRequest(f"Invalid 'n': at most {MAX_N}.", "n")
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        top_logprobs = mock_logprobs.requested(body)
    except (BadRequest, mock_logprobs.LogprobsRejected) as exc:
        code = "integer_above_max_value" if "above maximum value" in exc.message else None
        return openai_error(400, exc.message, "invalid_request_error", param=exc.param, code=code)

    await mock.delay(record, latency_ms)
    if fault == "500":
        return openai_error(500, "The server had an error while processing your request. (mock fault)", "server_error")
    if fault == "overloaded":
        return openai_error(
            503, "The engine is currently overloaded, please try again later. (mock fault)", "server_error"
        )
    if fault == "429":
        return openai_error(
            429,
            "Rate limit reached for requests. (mock fault)",
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )
    if fault == "401":
        return openai_error(
            401,
            "Incorrect API key provided. (mock fault)",
            "invalid_request_error",
            code="invalid_api_key",
        )
    if fault == "timeout":
        await asyncio.sleep(TIMEOUT_FAULT_SECONDS)

    pieces, finish_reason = mock.reply.cut(limit)
    prompt_tokens = count_prompt_tokens(body["messages"])
    completion_tokens = len(pieces) * n + mock.reasoning_tokens
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": min(mock.cached_tokens, prompt_tokens), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": mock.reasoning_tokens,
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
        events = _chunks(
            completion_id, model, pieces, finish_reason, n, usage if include_usage else None, include_usage,
            mock.chunk_tokens, top_logprobs,
        )
        return await write_events(request, headers, events, 1 if fault == "disconnect" else None, chunk_delay_ms)
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
    return web.Response(body=dumps(completion), content_type="application/json", headers=headers)


def _chunks(
    completion_id: str,
    model: str,
    pieces: tuple[str, ...],
    finish_reason: str,
    n: int,
    usage: dict[str, Any] | None,
    include_usage: bool,
    chunk_tokens: int,
    top_logprobs: int | None,
) -> list[bytes]:
    """The SSE events of a streamed completion: the role chunk, content chunks, the finish chunk, usage, [DONE]."""
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
        return b"data: " + dumps(payload) + b"\n\n"

    def choice(i: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    events = [chunk([choice(i, {"role": "assistant", "content": "", "refusal": None}) for i in range(n)])]
    for start in range(0, len(pieces), chunk_tokens):
        piece = pieces[start : start + chunk_tokens]
        logprobs = None if top_logprobs is None else {
            "content": mock_logprobs.entries(piece, top_logprobs, start), "refusal": None}
        events.append(chunk([choice(i, {"content": "".join(piece)}, None, logprobs) for i in range(n)]))
    events.append(chunk([choice(i, {}, finish_reason) for i in range(n)]))
    if usage is not None:
        events.append(chunk([], usage))
    events.append(b"data: [DONE]\n\n")
    return events
