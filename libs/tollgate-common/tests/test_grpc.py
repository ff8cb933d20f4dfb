"""``tollgate_common.grpc.rpc``: the one error mapping and trace continuation every servicer uses, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from tollgate_common.grpc import StatusTable, error_reason, retry_after, rpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class AppError(Exception):
    reason = "app_error"
    retry_after: int | None = None


class Missing(AppError):
    reason = "missing"


class Gone(Missing):  # not listed: takes its nearest listed base's status
    reason = "gone"


class Slow(AppError):
    reason = "slow"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


STATUSES = StatusTable({AppError: grpc.StatusCode.INTERNAL, Missing: grpc.StatusCode.NOT_FOUND,
                        Slow: grpc.StatusCode.RESOURCE_EXHAUSTED})
seen: list[tuple[str, str]] = []


class Servicer:
    @rpc(STATUSES, on_error=lambda name, error: seen.append((name, type(error).__name__)))
    async def Unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"gone":
            raise Gone("it went away")
        if request == b"slow":
            raise Slow("too many", retry_after=7)
        if request == b"bug":
            raise RuntimeError("secret prompt text")
        return trace.get_current_span().get_span_context().trace_id.to_bytes(16, "big")

    @rpc(STATUSES)
    async def Stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"one"
        raise Missing("ran out")

    @rpc(STATUSES, hide_unexpected=True)
    async def Hidden(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("secret prompt text")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    servicer = Servicer()
    server = grpc.aio.server()
    handlers: dict[str, Any] = {
        "Unary": grpc.unary_unary_rpc_method_handler(servicer.Unary),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.Stream),
        "Hidden": grpc.unary_unary_rpc_method_handler(servicer.Hidden),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.T", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


async def _fails(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_mapped_error_becomes_its_status_reason_and_retry_after(channel: grpc.aio.Channel) -> None:
    unary = channel.unary_unary("/test.T/Unary")
    gone = await _fails(unary(b"gone"))
    assert (gone.code(), error_reason(gone), gone.details()) == (grpc.StatusCode.NOT_FOUND, "gone", "it went away")
    slow = await _fails(unary(b"slow"))
    assert (slow.code(), error_reason(slow), retry_after(slow)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", 7)
    assert ("Unary", "Gone") in seen and ("Unary", "Slow") in seen


async def test_an_unexpected_error_is_left_to_grpc_or_hidden(channel: grpc.aio.Channel) -> None:
    bug = await _fails(channel.unary_unary("/test.T/Unary")(b"bug"))
    assert bug.code() == grpc.StatusCode.UNKNOWN
    hidden = await _fails(channel.unary_unary("/test.T/Hidden")(b""))
    assert (hidden.code(), error_reason(hidden), hidden.details()) == (
        grpc.StatusCode.INTERNAL, "internal", "internal error")


async def test_a_stream_that_fails_after_items_ends_with_the_mapped_status(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream("/test.T/Stream")(b"")
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in call:
            got.append(item)
    assert got == [b"one"]
    assert (caught.value.code(), error_reason(caught.value)) == (grpc.StatusCode.NOT_FOUND, "missing")


async def test_the_callers_traceparent_is_the_handlers_trace_without_an_interceptor(channel: grpc.aio.Channel) -> None:
    unary = channel.unary_unary("/test.T/Unary")
    traced = await unary(b"", metadata=(("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),))
    assert traced.hex() == TRACE_ID
    assert await unary(b"") == bytes(16)  # no header: no trace
    assert await unary(b"", metadata=(("traceparent", "00-nothex-00f067aa0ba902b7-01"),)) == bytes(16)
