"""Ingress's typed client of the router: one completion, one stream, one embedding call, the catalogue.

A completion comes back as a :class:`Completion`; a stream as chunks (``bytes``, OpenAI chunk JSON) and one last
:class:`Served` with the usage. Failures are mapped once (:func:`~tollgate_ingress.channels.from_grpc`), for a
stream also when it breaks half-way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tollgate.router.v1 import router_service_pb2 as rpb
from tollgate.router.v1 import router_service_pb2_grpc

from .channels import CallMetadata, UnaryCaller, from_grpc
from .domain import Usage
from .metrics import Metrics
from .policy_client import RoutingConstraints

__all__ = ["CatalogueModel", "Completion", "RouteRequest", "RouterClient", "Served"]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router needs for one request: the (possibly redacted) body and where it may go."""

    request_id: str
    account_id: str
    key_id: str
    model: str
    body_json: bytes
    constraints: RoutingConstraints
    #: The catalogue models billing checked and held for: the router may serve no other.
    authorized_models: Sequence[str]
    #: The prompt tokens the hold was sized with: the router records it on its attempts, so metering can charge a
    #: request by estimate when this ingress dies before publishing its usage (0 = unknown).
    prompt_tokens_estimate: int = 0


@dataclass(frozen=True, slots=True)
class Served:
    """Who served a request and what it used (the end of a stream, the metadata of a completion)."""

    usage: Usage
    provider: str = ""
    upstream_model: str = ""
    upstream_request_id: str = ""
    #: The public catalogue model actually served (a ``models`` fallback may differ from the requested model).
    model: str = ""


@dataclass(frozen=True, slots=True)
class Completion:
    """A non-streamed answer: the upstream's OpenAI body as it came, and who served it."""

    body_json: bytes
    served: Served
    #: The upstream reported no usage (Gemini embeddings): the caller bills its own count of what it sent.
    usage_unreported: bool = False


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    id: str
    provider: str
    owned_by: str
    aliases: tuple[str, ...]


def _usage(pb: rpb.Usage) -> Usage:
    return Usage(
        prompt_tokens=pb.prompt_tokens,
        completion_tokens=pb.completion_tokens,
        total_tokens=pb.total_tokens or pb.prompt_tokens + pb.completion_tokens,
        cached_prompt_tokens=pb.cached_prompt_tokens,
        reasoning_tokens=pb.reasoning_tokens,
        cache_write_tokens=pb.cache_write_tokens,
    )


def _served(pb: rpb.CompleteResponse | rpb.StreamEnd | rpb.EmbedResponse) -> Served:
    return Served(_usage(pb.usage), pb.provider, pb.upstream_model, pb.upstream_request_id, pb.model)


M = TypeVar("M", rpb.CompleteRequest, rpb.EmbedRequest)


def _constraints(c: RoutingConstraints) -> rpb.RoutingConstraints:
    return rpb.RoutingConstraints(
        allowed_providers=c.allowed_providers,
        denied_providers=c.denied_providers,
        allowed_regions=c.allowed_regions,
        allowed_models=c.allowed_models,
    )


def _message(request: RouteRequest, kind: type[M]) -> M:
    """The router's request message: ``CompleteRequest`` or ``EmbedRequest``, which have the same fields."""
    return kind(
        request_id=request.request_id,
        account_id=request.account_id,
        model=request.model,
        body_json=request.body_json,
        constraints=_constraints(request.constraints),
        key_id=request.key_id,
        authorized_models=request.authorized_models,
        prompt_tokens_estimate=request.prompt_tokens_estimate,
    )


class RouterClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: CallMetadata,
        *,
        timeout: float,
        catalogue_timeout: float,
        metrics: Metrics,
    ) -> None:
        self._stub = router_service_pb2_grpc.RouterServiceStub(channel)
        self._metadata = metadata
        #: Covers the upstream model's whole answer, retries and fallbacks included.
        self._timeout = timeout
        self._call = UnaryCaller("router", metadata, catalogue_timeout)
        self._complete_seconds = metrics.upstream_seconds.labels("router", "Complete")
        self._stream_seconds = metrics.upstream_seconds.labels("router", "StreamComplete")
        self._embed_seconds = metrics.upstream_seconds.labels("router", "Embed")

    async def complete(self, request: RouteRequest) -> Completion:
        started = time.perf_counter()
        try:
            reply = await self._call(self._stub.Complete, _message(request, rpb.CompleteRequest), self._timeout)
        finally:
            self._complete_seconds.observe(time.perf_counter() - started)
        return Completion(reply.body_json, _served(reply))

    async def embed(self, request: RouteRequest) -> Completion:
        """Embeddings: ``body_json`` is an OpenAI embeddings body; the answer is the upstream's, as it came."""
        started = time.perf_counter()
        try:
            reply = await self._call(self._stub.Embed, _message(request, rpb.EmbedRequest), self._timeout)
        finally:
            self._embed_seconds.observe(time.perf_counter() - started)
        return Completion(reply.body_json, _served(reply), usage_unreported=reply.usage_unreported)

    async def stream(self, request: RouteRequest) -> AsyncIterator[bytes | Served]:
        """Chunks as they come, then the :class:`Served` end (missing if the router broke its promise)."""
        started = time.perf_counter()
        call = self._stub.StreamComplete(
            _message(request, rpb.CompleteRequest), timeout=self._timeout, metadata=self._metadata()
        )
        try:
            async for message in call:
                if message.HasField("chunk_json"):
                    yield message.chunk_json
                elif message.HasField("end"):
                    yield _served(message.end)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service="router") from None
        finally:
            call.cancel()  # a no-op once the stream ended; stops the router when the reader left early
            self._stream_seconds.observe(time.perf_counter() - started)

    async def list_models(
        self, constraints: RoutingConstraints | None = None, timeout: float | None = None
    ) -> list[CatalogueModel]:
        """The catalogue's models, only those ``constraints`` allow when given."""
        message = rpb.ListModelsRequest(constraints=_constraints(constraints)) if constraints is not None else (
            rpb.ListModelsRequest()
        )
        reply = await self._call(self._stub.ListModels, message, timeout)
        return [CatalogueModel(m.id, m.provider, m.owned_by, tuple(m.aliases)) for m in reply.models]
