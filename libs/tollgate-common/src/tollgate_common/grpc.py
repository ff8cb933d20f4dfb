"""gRPC plumbing: a server with ``grpc.health.v1`` and tracing, long-lived client channels, and the one error
convention every service uses.

Errors: a status code from the table in each ``*_service.proto`` plus trailing metadata ``tollgate-reason`` (a
stable machine-readable code such as ``insufficient_balance``) and, for rate limits, ``retry-after`` (seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .telemetry import grpc_client_interceptors, grpc_server_interceptors

__all__ = [
    "GrpcServer",
    "abort",
    "error_reason",
    "open_channel",
    "retry_after",
    "wait_for_health",
]

REASON_KEY = "tollgate-reason"
RETRY_AFTER_KEY = "retry-after"

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


def open_channel(target: str) -> grpc.aio.Channel:
    """One long-lived, multiplexed channel per upstream service; create once, share for the process's life."""
    return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS, interceptors=grpc_client_interceptors())


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    retry_after: int | None = None,
) -> NoReturn:
    metadata: list[tuple[str, str]] = [(REASON_KEY, reason)]
    if retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, str(retry_after)))
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

