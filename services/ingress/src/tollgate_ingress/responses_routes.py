"""OpenAI's Responses API: ``POST /v1/responses``.

Transport only: the key from ``Authorization: Bearer``, the body translated by
:mod:`tollgate_ingress.responses_wire`, then the chat path of :mod:`tollgate_ingress.chat` (hold, policy,
router, one usage event) exactly as ``/v1/chat/completions`` takes it. Errors are OpenAI's error JSON (raised as
:class:`~tollgate_ingress.errors.IngressError` and mapped by the app, as on chat).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from .deps import services
from .domain import TAGS_HEADER, parse_chat_request
from .metrics import Metrics
from .openai_routes import bearer_token, checked_key, peer, read_body
from .responses_wire import ResponseStream, parse_responses_request, response_from_completion
from .sse import SseResponse
from .streaming import StreamEnded, StreamFailed, StreamItem, StreamSession

__all__ = ["router"]

router = APIRouter()

JSON = "application/json"


class ResponsesSseResponse(SseResponse):
    """The chat stream's response (same session, disconnect handling and coalesced writes), framed as the
    Responses API's events instead of chat chunks."""

    def __init__(self, session: StreamSession, first: StreamItem, metrics: Metrics, translator: ResponseStream) -> None:
        super().__init__(session, first, metrics)
        self.translator = translator

    def _frame(self, item: StreamItem) -> tuple[bytes, bool]:
        if isinstance(item, bytes):
            return self.translator.chunk(item), False
        if isinstance(item, StreamEnded):
            return self.translator.end(item.usage), True
        if isinstance(item, StreamFailed):
            return self.translator.error(item.error), True
        raise TypeError(f"unexpected stream item {item!r}")  # pragma: no cover


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    key = await checked_key(request, bearer_token(request))  # the caller, before its body is read
    svc = services(request)
    parsed = parse_responses_request(await read_body(request, svc.settings.max_body_bytes))
    chat_request = parse_chat_request(orjson.dumps(parsed.chat_body), request.headers.get(TAGS_HEADER))
    request_id: str = request.state.request_id
    prepared = await svc.chat.prepare(key, request_id, chat_request, peer(request))
    if not parsed.stream:
        completion = await svc.chat.complete(prepared)
        return Response(response_from_completion(completion, parsed, request_id, prepared.usage), media_type=JSON)
    session, first = await svc.chat.stream_started(prepared)
    return ResponsesSseResponse(session, first, svc.deps.metrics, ResponseStream(parsed, request_id))
