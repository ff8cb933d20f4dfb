"""gRPC plumbing: a server with ``grpc.health.v1`` and tracing, long-lived client channels, and the one error
convention every service uses.

Errors: a status code from the table in each ``*_service.proto`` plus trailing metadata ``tollgate-reason`` (a
stable machine-readable code such as ``insufficient_balance``) and, for rate limits, ``retry-after`` (seconds).

Each service's ``errors.py`` is pure (an exception hierarchy whose classes carry a stable ``reason`` and, for rate
limits, a ``retry_after``); its ``grpc_server.py`` holds the one :class:`StatusTable` (class → status code) and
decorates every servicer method with :func:`rpc`, which maps those errors on the way out and continues the
caller's trace on the way in (modelled on httpx's ``map_httpcore_exceptions``: one place, one table).
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .internal_auth import InternalAuth
from .telemetry import attach_traceparent, grpc_client_interceptors, grpc_server_interceptors, spans_exported

__all__ = [
    "GrpcServer",
    "StatusTable",
    "abort",
    "error_param",
    "error_reason",
    "open_channel",
    "retry_after",
    "rpc",
    "wait_for_health",
]

log = logging.getLogger(__name__)

REASON_KEY = "tollgate-reason"
#: On a failed router call: a provider may have served (and will bill) it, its usage unknown (a timeout, a cut).
USAGE_UNKNOWN_KEY = "tollgate-usage-unknown"
RETRY_AFTER_KEY = "retry-after"
#: The request field an INVALID_ARGUMENT is about (OpenAI's error ``param``), when the refusing party named one.
PARAM_KEY = "tollgate-param"

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class GrpcServer:
    """A grpc.aio server that serves health for every registered service and stops gracefully."""

    def __init__(self, host: str, port: int) -> None:
        self.server = grpc.aio.server(interceptors=grpc_server_interceptors(), options=_CHANNEL_OPTIONS)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"{host}:{port}"
        self.port = 0
        self.service_names: list[str] = []

    def add(self, register: Callable[[object, grpc.aio.Server], None], servicer: object, full_name: str) -> None:
        """Register a servicer and serve health for it.

        ``register`` is the generated ``add_XServicer_to_server``; ``full_name`` e.g.
        ``tollgate.billing.v1.BillingService``.
        """
        register(servicer, self.server)
        self.service_names.append(full_name)

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        await self.server.start()
        for name in [*self.service_names, ""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 10.0) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish for up to ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def open_channel(
    target: str, auth: InternalAuth | None = None, *, per_call_metadata: bool = False
) -> grpc.aio.Channel:
    """One long-lived, multiplexed channel per upstream service; create once, share for the process's life.

    ``auth``: this process's identity, whose caller token goes with every call (see :mod:`.internal_auth`).
    ``per_call_metadata``: the caller passes the token and the ``traceparent`` as ``metadata=`` on each call
    itself, so the channel has no metadata interceptor (grpc.aio's intercepted call path costs ~1 ms of CPU per
    call); only OpenTelemetry's, when spans are exported.
    """
    if per_call_metadata:
        interceptors = grpc_client_interceptors() if spans_exported() else []
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS, interceptors=interceptors)
    identity = auth.metadata if auth is not None and auth.enabled else None
    return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS, interceptors=grpc_client_interceptors(identity))


class StatusTable:
    """A service's error classes → gRPC status codes, once. A class not listed takes its nearest listed base (its
    MRO), so a new subclass needs a row only when its status differs; a class with no listed base is INTERNAL."""

    def __init__(self, table: Mapping[type[BaseException], grpc.StatusCode]) -> None:
        self._table = dict(table)
        self._resolved: dict[type[BaseException], grpc.StatusCode] = {}

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The classes the table maps (what :func:`rpc` catches)."""
        return tuple(self._table)

    def status_of(self, error: BaseException) -> grpc.StatusCode:
        cls = type(error)
        found = self._resolved.get(cls)
        if found is None:
            found = next((self._table[c] for c in cls.__mro__ if c in self._table), grpc.StatusCode.INTERNAL)
            self._resolved[cls] = found
        return found


M = TypeVar("M", bound=Callable[..., Any])


def rpc(
    statuses: StatusTable,
    *,
    hide_unexpected: bool = False,
    on_error: Callable[[str, BaseException], None] | None = None,
) -> Callable[[M], M]:
    """Decorate a servicer method (unary or server-streaming): continue the caller's trace, and turn an error the
    table maps into its status + ``tollgate-reason`` (+ ``retry-after`` when the error carries ``retry_after``).

    The message is ``str(error)``: errors are written so that it never quotes keys or prompt text. With
    ``hide_unexpected`` any other exception becomes INTERNAL "internal error" and is logged by type and stack only
    (its message might quote the input); without it, gRPC's own handling applies (UNKNOWN). ``on_error`` sees
    each mapped error with the method's name first (a metric, a log line by reason).
    """
    mapped = statuses.errors
    caught: tuple[type[BaseException], ...] = (Exception,) if hide_unexpected else mapped

    async def fail(name: str, context: grpc.aio.ServicerContext, error: BaseException) -> NoReturn:
        if isinstance(error, mapped):
            if on_error is not None:
                on_error(name, error)
            reason = str(getattr(error, "reason", "internal"))
            await abort(context, statuses.status_of(error), str(error), reason=reason,
                        retry_after=getattr(error, "retry_after", None))
        log.error("unexpected error", extra={"rpc": name, "error_type": type(error).__name__,
                                             "stack": "".join(traceback.format_tb(error.__traceback__))})
        await abort(context, grpc.StatusCode.INTERNAL, "internal error", reason="internal")

    def decorate(method: M) -> M:
        name = method.__name__
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                attach_traceparent(context)
                try:
                    async for item in method(self, request, context):
                        yield item
                except caught as error:
                    await fail(name, context, error)

            return stream  # type: ignore[return-value]

        @functools.wraps(method)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            attach_traceparent(context)
            try:
                return await method(self, request, context)
            except caught as error:
                await fail(name, context, error)

        return unary  # type: ignore[return-value]

    return decorate


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    retry_after: int | None = None,
    param: str | None = None,
    usage_unknown: bool = False,
) -> NoReturn:
    metadata: list[tuple[str, str]] = [(REASON_KEY, reason)]
    if retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, str(retry_after)))
    if param:
        metadata.append((PARAM_KEY, param))
    if usage_unknown:
        metadata.append((USAGE_UNKNOWN_KEY, "1"))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


def _trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    for k, v in error.trailing_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return _trailer(error, REASON_KEY) or ""


def error_param(error: grpc.aio.AioRpcError) -> str | None:
    return _trailer(error, PARAM_KEY) or None


def usage_unknown(error: grpc.aio.AioRpcError) -> bool:
    return _trailer(error, USAGE_UNKNOWN_KEY) == "1"


def retry_after(error: grpc.aio.AioRpcError) -> int | None:
    value = _trailer(error, RETRY_AFTER_KEY)
    return int(value) if value and value.isdigit() else None


async def wait_for_health(target: str, *, service: str = "", timeout: float = 30.0) -> None:
    """Block until ``target`` reports SERVING (for start-up ordering and tests)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not healthy after {timeout}s")
            await asyncio.sleep(0.1)

