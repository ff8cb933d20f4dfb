"""OpenAI's legacy ``POST /v1/completions``.

Transport only: the key from ``Authorization: Bearer``, the body translated by
:mod:`tollgate_ingress.completions_wire`, then the chat path exactly as ``/v1/chat/completions`` takes it.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from .completions_wire import CompletionsRequest, completion_chunk, completion_from_chat, parse_completions_request
from .deps import services
from .domain import TAGS_HEADER, parse_chat_request
from .metrics import Metrics
from .openai_routes import bearer_token, checked_key, peer, read_body
from .sse import SseResponse
from .streaming import StreamEnded, StreamItem, StreamSession

__all__ = ["router"]

router = APIRouter()

_DONE = b"data: [DONE]\n\n"


class CompletionsSseResponse(SseResponse):
    """The chat stream's response, its chunks as ``text_completion`` chunks."""

    def __init__(self, session: StreamSession, first: StreamItem, metrics: Metrics,
                 request: CompletionsRequest) -> None:
        super().__init__(session, first, metrics)
        self.request = request

    def _frame(self, item: StreamItem) -> tuple[bytes, bool]:
        request_id = self.session.prepared.request_id
        if isinstance(item, bytes):
            chunk = completion_chunk(item, self.request, request_id)
            return (b"data: " + chunk + b"\n\n" if chunk else b""), False
        if isinstance(item, StreamEnded) and self.session.prepared.request.include_usage:
            u = item.usage
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                     "total_tokens": u.prompt_tokens + u.completion_tokens}
            last = orjson.dumps({"id": "cmpl-" + request_id.removeprefix("req_"), "object": "text_completion",
                                 "model": self.request.model, "choices": [], "usage": usage})
            return b"data: " + last + b"\n\n" + _DONE, True
        return super()._frame(item)


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    key = await checked_key(request, bearer_token(request))  # the caller, before its body is read
    svc = services(request)
    parsed = parse_completions_request(await read_body(request, svc.settings.max_body_bytes))
    chat_request = parse_chat_request(orjson.dumps(parsed.chat_body), request.headers.get(TAGS_HEADER))
    request_id: str = request.state.request_id
    prepared = await svc.chat.prepare(key, request_id, chat_request, peer(request))
    if not parsed.stream:
        completion = await svc.chat.complete(prepared)
        return Response(completion_from_chat(completion, parsed, request_id, prepared.usage),
                        media_type="application/json")
    session, first = await svc.chat.stream_started(prepared)
    return CompletionsSseResponse(session, first, svc.deps.metrics, parsed)
