"""OpenAI's ``POST /v1/embeddings``.

Transport only: the key from ``Authorization: Bearer``, the body validated by
:mod:`tollgate_ingress.embeddings_wire`, the work in :mod:`tollgate_ingress.embeddings`. Errors are OpenAI's error
JSON (raised as :class:`~tollgate_ingress.errors.IngressError` and mapped by the app, as on chat).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .deps import services
from .domain import TAGS_HEADER
from .embeddings import create_embeddings
from .embeddings_wire import parse_embeddings_request
from .openai_routes import bearer_token, checked_key, read_body

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    key = await checked_key(request, bearer_token(request))  # the caller, before its body is read
    svc = services(request)
    parsed = parse_embeddings_request(await read_body(request, svc.settings.max_body_bytes))
    body = await create_embeddings(svc.chat, key, request.state.request_id, parsed, request.headers.get(TAGS_HEADER))
    return Response(body, media_type="application/json")
