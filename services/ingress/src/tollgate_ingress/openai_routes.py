"""The OpenAI-compatible API: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/key``.

Transport only: headers and JSON in, JSON and SSE out; the work is in :mod:`tollgate_ingress.chat`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from .deps import services
from .domain import TAGS_HEADER, parse_chat_request
from .errors import AuthenticationFailed, NotFound, PayloadTooLarge
from .money import ExactNumber, dumps_exact
from .router_client import CatalogueModel
from .sse import SseResponse

__all__ = ["bearer_token", "checked_key", "peer", "read_body", "router"]

router = APIRouter()

JSON = "application/json"


def bearer_token(request: Request) -> str:
    """The API key from ``Authorization: Bearer <key>``. Checked for shape only; billing decides if it is valid."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer tg-…'.", code="missing_api_key"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthenticationFailed(
            "The Authorization header must be 'Bearer <API key>'.", code="invalid_authorization_header"
        )
    return token


def peer(request: Request) -> str:
    """The address failed credentials are counted against (the direct peer: see README, "Edge limits")."""
    return request.client.host if request.client else ""


async def checked_key(request: Request, key: str) -> str:
    """``key``, once the key gate knows it is good (tollgate_ingress.admission): before any body is read; 401 for
    a key billing refused, 429 for a peer that sent too many of those."""
    await services(request).gate.check(key, peer(request))
    return key


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` (not after buffering it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    api_key = await checked_key(request, bearer_token(request))
    svc = services(request)
    chat_request = parse_chat_request(await read_body(request, svc.settings.max_body_bytes),
                                      request.headers.get(TAGS_HEADER))
    prepared = await svc.chat.prepare(api_key, request.state.request_id, chat_request, peer(request))
    if not chat_request.stream:
        return Response(await svc.chat.complete(prepared), media_type=JSON)
    session, first = await svc.chat.stream_started(prepared)
    return SseResponse(session, first, svc.deps.metrics)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    if "anthropic-version" in request.headers:  # the anthropic SDK's models.list(): its shape, its auth
        from .anthropic_routes import list_models as anthropic_models

        return await anthropic_models(request)
    reply = await services(request).keys.models(await checked_key(request, bearer_token(request)),
                                                request.state.request_id)
    data = [{"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by or m.provider} for m in reply]
    return Response(dumps_exact({"object": "list", "data": data}), media_type=JSON)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model the key may use (``client.models.retrieve``), by id or alias; 404 ``model_not_found`` otherwise."""
    if "anthropic-version" in request.headers:
        from .anthropic_routes import retrieve_model as anthropic_model

        return await anthropic_model(request, model_id)
    reply = await services(request).keys.models(await checked_key(request, bearer_token(request)),
                                                request.state.request_id)
    model = find_model(reply, model_id)
    if model is None:
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model",
                       code="model_not_found")
    body = {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by or model.provider}
    return Response(dumps_exact(body), media_type=JSON)


def find_model(models: Sequence[CatalogueModel], model_id: str) -> CatalogueModel | None:
    """The listed model named ``model_id`` or answering to it as an alias."""
    return next((m for m in models if m.id == model_id or model_id in m.aliases), None)


@router.get("/v1/key")
async def key_info(request: Request) -> Response:
    info = await services(request).keys.key_info(await checked_key(request, bearer_token(request)))
    data: dict[str, object] = {
        "label": info.label,
        "balance": ExactNumber.of_nanos(info.balance_nanos),
        "usage": ExactNumber.of_nanos(info.usage_nanos),
        "limit": None,
        "limit_remaining": None,
        "currency": info.currency,
        "tightest_limit": None,
    }
    if info.HasField("tightest_limit"):  # the key's own limit or a budget of its chain: the one with least left
        tight = info.tightest_limit
        data["limit"] = ExactNumber.of_nanos(tight.limit_nanos)
        data["limit_remaining"] = ExactNumber.of_nanos(tight.remaining_nanos)
        data["tightest_limit"] = {
            "scope": tight.scope, "scope_id": tight.scope_id, "budget_id": tight.budget_id or None,
            "period": tight.period, "limit": data["limit"], "remaining": data["limit_remaining"],
            "resets_at": tight.resets_at_unix_ms // 1000 if tight.resets_at_unix_ms else None,
        }
    elif info.has_limit:
        data["limit"] = ExactNumber.of_nanos(info.limit_nanos)
        data["limit_remaining"] = ExactNumber.of_nanos(info.limit_remaining_nanos)
    return Response(dumps_exact({"data": data}), media_type=JSON)
