"""The gRPC plumbing under ingress's typed clients: the three long-lived channels, the metadata every call
carries, and the one translation of a failed call into the client's error.

Channels are created once per process and shared by every request (a channel multiplexes calls over one HTTP/2
connection; one per request would cost a TCP and HTTP/2 handshake each time). They carry no metadata interceptor:
each call passes its caller token (:mod:`tollgate_common.internal_auth`) and the current ``traceparent`` as
``metadata=`` itself, which costs a tuple, where grpc.aio's intercepted call path cost ~1 ms of CPU per call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from opentelemetry import trace
from tollgate_common.grpc import error_param, error_reason, open_channel, retry_after, usage_unknown
from tollgate_common.internal_auth import InternalAuth
from tollgate_common.telemetry import spans_exported

from .config import Settings
from .errors import (
    AuthenticationFailed,
    Conflict,
    IngressError,
    InsufficientQuota,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)

__all__ = ["CallMetadata", "Channels", "UnaryCaller", "from_grpc"]

Metadata = tuple[tuple[str, str], ...]
R = TypeVar("R")


def _traceparent() -> str:
    """The W3C ``traceparent`` of the current span ("" outside a trace), formatted directly: the same text
    OpenTelemetry's propagator writes, without building a carrier dict per call."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


class CallMetadata:
    """What every internal call sends: the caller token and, unless OpenTelemetry's interceptor injects it
    (spans exported), the current ``traceparent``."""

    __slots__ = ("_auth", "_traceparent")

    def __init__(self, auth: InternalAuth) -> None:
        self._auth = auth
        self._traceparent = not spans_exported()

    def __call__(self) -> Metadata:
        identity = self._auth.metadata()
        if not self._traceparent:
            return identity
        current = _traceparent()
        return (("traceparent", current), *identity) if current else identity


class UnaryCaller:
    """Makes unary calls to one service: per-call metadata and deadline, failures mapped by :func:`from_grpc`."""

    __slots__ = ("metadata", "service", "timeout")

    def __init__(self, service: str, metadata: CallMetadata, timeout: float) -> None:
        self.service = service
        self.metadata = metadata
        self.timeout = timeout

    async def __call__(self, method: Callable[..., Awaitable[R]], request: Any, timeout: float | None = None) -> R:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self.metadata())
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, service=self.service) from None


@dataclass(frozen=True, slots=True)
class Channels:
    billing: grpc.aio.Channel
    policy: grpc.aio.Channel
    router: grpc.aio.Channel
    metadata: CallMetadata
    #: Only the usage analytics routes use it, so it is not part of readiness: metering being away must not take
    #: ingress out of the balancer.
    metering: grpc.aio.Channel | None = None
    #: Indexes of channels that have been READY at least once.
    connected_once: set[int] = field(default_factory=set)

    @classmethod
    def connect(cls, settings: Settings) -> Channels:
        """Open the channels (lazily connecting; a down service does not stop ingress from starting)."""
        return cls(
            billing=open_channel(settings.billing_addr, per_call_metadata=True),
            policy=open_channel(settings.policy_addr, per_call_metadata=True),
            router=open_channel(settings.router_addr, per_call_metadata=True),
            metering=open_channel(settings.metering_addr, per_call_metadata=True),
            metadata=CallMetadata(InternalAuth("ingress", settings.internal_keys)),
        )

    @property
    def all(self) -> tuple[grpc.aio.Channel, ...]:
        return (self.billing, self.policy, self.router)

    def ready(self) -> bool:
        """True when every channel is connected; asking also starts connecting an idle channel.

        A channel that was connected and went IDLE (gRPC closes unused connections after a while) still counts:
        it reconnects on the next call, and readiness should not flap because traffic paused."""
        ok = True
        for i, channel in enumerate(self.all):
            state = channel.get_state(try_to_connect=True)
            if state == grpc.ChannelConnectivity.READY:
                self.connected_once.add(i)
            elif not (state == grpc.ChannelConnectivity.IDLE and i in self.connected_once):
                ok = False
        return ok

    async def close(self) -> None:
        for channel in self.all:
            await channel.close()
        if self.metering is not None:
            await self.metering.close()


_BY_CODE: dict[grpc.StatusCode, type[IngressError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationFailed,
    grpc.StatusCode.FAILED_PRECONDITION: InsufficientQuota,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.DEADLINE_EXCEEDED: UpstreamTimeout,
}

#: FAILED_PRECONDITION reasons that are about the resource's state, not about money (409, not 402).
_CONFLICTS = frozenset({"key_revoked", "group_archived"})


def from_grpc(error: grpc.aio.AioRpcError, *, service: str) -> IngressError:
    """Translate a failed call to ``service`` ("billing", "policy" or "router") into the client's error; the
    ``tollgate-reason`` trailer becomes the error's ``code``.

    A broken router means the model provider failed (502); a broken billing or policy means Tollgate itself is
    degraded (503), which clients should retry elsewhere or later.
    A failed router call carries ``usage_unknown`` (see IngressError).
    """
    translated = _from_grpc(error, service=service)
    if service == "router":
        # The router says an attempt may be billed unseen; or ingress's own deadline cut the call (no reason
        # trailer), after which the router cancels an attempt that the provider may be serving.
        translated.usage_unknown = usage_unknown(error) or (
            error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not error_reason(error))
    return translated


def _from_grpc(error: grpc.aio.AioRpcError, *, service: str) -> IngressError:
    code = error.code()
    reason = error_reason(error) or None
    message = error.details() or f"{service} failed ({code.name})"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(message, code=reason, retry_after_seconds=retry_after(error))
    if service == "router" and code == grpc.StatusCode.FAILED_PRECONDITION:
        # No deployment left after policy limits and the caller's `provider`/`models` overrides: the request
        # can't be served as asked (OpenRouter answers such a request with a 4xx too), not a balance problem.
        return InvalidRequest(message, code=reason or "no_eligible_deployment")
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason in _CONFLICTS:
        return Conflict(message, code=reason)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The field at fault, as the refusing party (an upstream's OpenAI-format 400, or our own check) named it.
        return InvalidRequest(message, code=reason, param=error_param(error))
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, code=reason)
    if service == "router":
        return UpstreamFailed(message, code=reason)
    return ServiceUnavailable(f"{service} is unavailable: {message}", code=reason)
