"""Anthropic's Messages API: ``POST /v1/messages``, ``POST /v1/messages/count_tokens``, and ``GET /v1/models`` in
Anthropic's shape (answered from :func:`tollgate_ingress.openai_routes.list_models` when the caller sends
``anthropic-version``).

Transport only: the key from ``x-api-key`` or ``Authorization: Bearer``, the body translated by
:mod:`tollgate_ingress.anthropic_wire`, and then the chat path of :mod:`tollgate_ingress.chat` (hold,
policy, router, one usage event) exactly as ``/v1/chat/completions`` takes it. Every error, whatever raised it,
leaves as Anthropic's error JSON.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from .anthropic_wire import (
    MessagesRequest,
    MessageStream,
    error_body,
    error_event,
    message_from_completion,
    parse_messages_request,
)
from .deps import services
from .domain import parse_chat_request
from .errors import AuthenticationFailed, IngressError, InternalError, NotFound
from .metrics import Metrics
from .openai_routes import bearer_token, checked_key, peer, read_body
from .sse import SseResponse
from .streaming import StreamEnded, StreamFailed, StreamItem, StreamSession

__all__ = ["api_key", "list_models", "retrieve_model", "router"]

log = logging.getLogger(__name__)

router = APIRouter()

JSON = "application/json"


def api_key(request: Request) -> str:
    """``x-api-key`` (the anthropic SDK's default), else ``Authorization: Bearer`` (its ``auth_token``)."""
    key = request.headers.get("x-api-key")
    if key is not None:
        key = key.strip()
        if not key or " " in key:
            raise AuthenticationFailed("The x-api-key header must hold a Tollgate API key.", code="invalid_api_key")
        return key
    if "authorization" not in request.headers:
        raise AuthenticationFailed(
            "x-api-key header is required (a Tollgate key, tg-…), or send it as 'Authorization: Bearer'.",
            code="missing_api_key",
        )
    return bearer_token(request)


def _error(error: IngressError) -> Response:
    return Response(error_body(error), status_code=error.status, headers=error.headers(), media_type=JSON)


class MessagesSseResponse(SseResponse):
    """The chat stream's response (same session, disconnect handling and coalesced writes), framed as
    Anthropic's events instead of OpenAI's ``data:`` chunks."""

    def __init__(self, session: StreamSession, first: StreamItem, metrics: Metrics, translator: MessageStream) -> None:
        super().__init__(session, first, metrics)
        self.translator = translator

    def _frame(self, item: StreamItem) -> tuple[bytes, bool]:
        if isinstance(item, bytes):
            return self.translator.chunk(item), False
        if isinstance(item, StreamEnded):
            return self.translator.end(item.usage), True
        if isinstance(item, StreamFailed):
            return error_event(item.error), True
        raise TypeError(f"unexpected stream item {item!r}")  # pragma: no cover


async def _messages(request: Request) -> Response:
    key = await checked_key(request, api_key(request))
    svc = services(request)
    parsed: MessagesRequest = parse_messages_request(await read_body(request, svc.settings.max_body_bytes))
    chat_request = parse_chat_request(orjson.dumps(parsed.chat_body))
    request_id: str = request.state.request_id
    prepared = await svc.chat.prepare(key, request_id, chat_request, peer(request))
    if not parsed.stream:
        completion = await svc.chat.complete(prepared)
        return Response(message_from_completion(completion, parsed, request_id, prepared.usage), media_type=JSON)
    session, first = await svc.chat.stream_started(prepared)
    translator = MessageStream(model=parsed.model, fallback_id=request_id,
                               estimated_input_tokens=prepared.prompt_tokens)
    return MessagesSseResponse(session, first, svc.deps.metrics, translator)


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    try:
        return await _messages(request)
    except IngressError as exc:
        return _error(exc)
    except Exception:
        log.exception("messages request failed unexpectedly")
        return _error(InternalError("The server had an error processing your request."))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """The prompt's tokens, counted with the tokenizer that sizes the hold (cl100k: an estimate for Claude
    models, whose tokenizer is not public). Authenticated, not billed, as Anthropic's."""
    try:
        await checked_key(request, api_key(request))  # authenticates the caller before the body is read
        svc = services(request)
        parsed = parse_messages_request(await read_body(request, svc.settings.max_body_bytes), counting=True)
        chat_request = parse_chat_request(orjson.dumps(parsed.chat_body))
        tokens = await svc.chat.counter.count(chat_request.messages, chat_request.prompt_extras, len(chat_request.raw))
    except IngressError as exc:
        return _error(exc)
    return Response(orjson.dumps({"input_tokens": tokens}), media_type=JSON)


async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model in Anthropic's shape (``client.models.retrieve``); 404 ``not_found_error`` otherwise."""
    from .openai_routes import find_model

    try:
        reply = await services(request).keys.models(await checked_key(request, api_key(request)),
                                                    request.state.request_id)
        model = find_model(reply, model_id)
        if model is None:
            raise NotFound(f"model: {model_id}")  # Anthropic's own text for an unknown model id
    except IngressError as exc:
        return _error(exc)
    created = datetime.fromtimestamp(0, UTC).isoformat().replace("+00:00", "Z")
    body = {"type": "model", "id": model.id, "display_name": model.id, "created_at": created}
    return Response(orjson.dumps(body), media_type=JSON)


async def list_models(request: Request) -> Response:
    """Anthropic's model list (``type: model``, ``display_name``, ``created_at``; one page)."""
    try:
        reply = await services(request).keys.models(await checked_key(request, api_key(request)),
                                                    request.state.request_id)
    except IngressError as exc:
        return _error(exc)
    created = datetime.fromtimestamp(0, UTC).isoformat().replace("+00:00", "Z")
    data = [{"type": "model", "id": m.id, "display_name": m.id, "created_at": created} for m in reply]
    body = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
    return Response(orjson.dumps(body), media_type=JSON)
