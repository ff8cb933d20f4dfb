"""``tollgate.router.v1.RouterService``: protobuf in and out of :class:`~tollgate_router.application.Router`.

Nothing but mapping: messages to arguments, results to messages, and :mod:`tollgate_router.errors` to gRPC
status codes, in the one table below.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import abort
from tollgate_common.internal_auth import InternalAuth, guard_servicer
from tollgate_common.logs import request_id_var
from tollgate_common.telemetry import attach_traceparent

from .application import Router
from .domain import Completion, ModelEntry, Usage
from .embeddings import Embedder
from .errors import (
    InvalidRequest,
    ModelNotFound,
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .routing import Constraints, NoEligibleDeployment

__all__ = ["CALLERS", "SERVICE_NAME", "RouterServicer"]

SERVICE_NAME = "tollgate.router.v1.RouterService"

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[RouterError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    UpstreamRejected: grpc.StatusCode.INVALID_ARGUMENT,
    UpstreamRateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UpstreamAuthFailed: grpc.StatusCode.UNAVAILABLE,
    UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    UpstreamTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    NoEligibleDeployment: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(error: RouterError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, error: RouterError) -> NoReturn:
    # The reason, not the message: an upstream's message may quote the caller's input.
    log.warning("call failed", extra={"reason": error.reason, "status": status_code(error).name})
    await abort(
        context,
        status_code(error),
        error.message,
        reason=error.code or error.reason,
        retry_after=error.retry_after,
        param=error.param,
        usage_unknown=error.usage_unknown,
    )
    raise AssertionError("unreachable")  # abort raises; this tells type checkers so


def _usage(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


#: Who may call what (see tollgate_common.internal_auth): only ingress, which has billed the call first; anyone else
#: would use the operator's provider keys unbilled.
CALLERS: dict[str, frozenset[str]] = {
    "Complete": frozenset({"ingress"}),
    "StreamComplete": frozenset({"ingress"}),
    "ListModels": frozenset({"ingress"}),
    "Embed": frozenset({"ingress"}),
}


@guard_servicer(CALLERS, pb_grpc.RouterServiceServicer)
class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, router: Router, internal_auth: InternalAuth, embedder: Embedder | None = None) -> None:
        self.router = router
        self.internal_auth = internal_auth
        self.embedder = embedder

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        request_id_var.set(request.request_id)
        attach_traceparent(context)  # no server interceptor: the caller's trace continues here
        try:
            result = await self.router.complete(**_call(request, context))
        except RouterError as error:
            await _abort(context, error)
        return pb.CompleteResponse(**_answer(result))

    async def StreamComplete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        request_id_var.set(request.request_id)
        attach_traceparent(context)  # no server interceptor: the caller's trace continues here
        events = self.router.stream_complete(**_call(request, context))
        try:
            async with aclosing(events):  # a cancelled call closes the upstream response now, not at GC
                async for event in events:
                    if isinstance(event, bytes):
                        yield pb.StreamCompleteResponse(chunk_json=event)
                    else:
                        yield pb.StreamCompleteResponse(
                            end=pb.StreamEnd(
                                model=event.model,
                                usage=_usage(event.usage),
                                provider=event.provider,
                                upstream_model=event.upstream_model,
                                upstream_request_id=event.upstream_request_id,
                            )
                        )
        except RouterError as error:
            await _abort(context, error)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        request_id_var.set(request.request_id)
        attach_traceparent(context)
        if self.embedder is None:
            await abort(context, grpc.StatusCode.UNIMPLEMENTED, "embeddings are not configured",
                        reason="not_implemented")
        assert self.embedder is not None
        try:
            result = await self.embedder.embed(**_call(request, context))
        except RouterError as error:
            await _abort(context, error)
        return pb.EmbedResponse(**_answer(result), usage_unreported=not result.usage_reported)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        currency = self.router.catalogue.currency
        listed = self.router.list_models(_constraints(request.constraints))
        return pb.ListModelsResponse(models=[_model(entry, currency) for entry in listed])


def _call(request: pb.CompleteRequest | pb.EmbedRequest, context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """What Complete, StreamComplete and Embed hand the router: the request's routing fields, the caller's deadline."""
    return {
        "request_id": request.request_id,
        "model": request.model,
        "body_json": request.body_json,
        "deadline": context.time_remaining(),
        "account_id": request.account_id,
        "constraints": _constraints(request.constraints, request.authorized_models),
        "prompt_tokens_estimate": max(0, request.prompt_tokens_estimate),
    }


def _answer(result: Completion) -> dict[str, Any]:
    """A served unary call's fields, shared by CompleteResponse and EmbedResponse."""
    return {
        "model": result.model,
        "body_json": result.body_json,
        "usage": _usage(result.usage),
        "provider": result.provider,
        "upstream_model": result.upstream_model,
        "upstream_request_id": result.upstream_request_id,
    }


def _constraints(message: pb.RoutingConstraints, authorized_models: Iterable[str] = ()) -> Constraints:
    return Constraints(
        frozenset(message.allowed_providers),
        frozenset(message.denied_providers),
        frozenset(message.allowed_regions),
        frozenset(message.allowed_models),
        frozenset(authorized_models),
    )


def _model(entry: ModelEntry, currency: str) -> pb.Model:
    """A catalogue entry; prices are the cheapest known deployment's (by input + output), 0 when none is known."""
    priced = [
        d
        for d in entry.deployments
        if d.input_price_per_mtok_nanos is not None and d.output_price_per_mtok_nanos is not None
    ]
    cheapest = min(
        priced,
        key=lambda d: (d.input_price_per_mtok_nanos or 0) + (d.output_price_per_mtok_nanos or 0),
        default=None,
    )
    return pb.Model(
        id=entry.name,
        provider=entry.deployments[0].provider.name,
        owned_by=entry.owned_by,
        providers=list(dict.fromkeys(d.provider.name for d in entry.deployments)),
        aliases=list(entry.aliases),
        input_price_per_mtok_nanos=(cheapest.input_price_per_mtok_nanos or 0) if cheapest else 0,
        output_price_per_mtok_nanos=(cheapest.output_price_per_mtok_nanos or 0) if cheapest else 0,
        currency=currency,
    )


def register(servicer: object, server: grpc.aio.Server) -> None:
    pb_grpc.add_RouterServiceServicer_to_server(servicer, server)
