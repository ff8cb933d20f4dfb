"""``tollgate.metering.v1.MeteringService``: protobuf ↔ application, and the one place errors become gRPC statuses."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tollgate.metering.v1 import metering_service_pb2 as pb
from tollgate.metering.v1 import metering_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import abort

from .application import Metering
from .domain import PriceBook
from .errors import InvalidRequest, InvalidUsage, MeteringError, PriceBookError

__all__ = ["FULL_NAME", "STATUS_OF", "MeteringServicer", "price_book_response", "status_of"]

FULL_NAME = "tollgate.metering.v1.MeteringService"

#: The error hierarchy → gRPC status codes, once. A subclass not listed takes its nearest listed base.
STATUS_OF: dict[type[MeteringError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidUsage: grpc.StatusCode.INVALID_ARGUMENT,
    PriceBookError: grpc.StatusCode.FAILED_PRECONDITION,
    MeteringError: grpc.StatusCode.INTERNAL,
}

R = TypeVar("R")


def status_of(exc: MeteringError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def _mapped(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except MeteringError as exc:
            await abort(context, status_of(exc), str(exc), reason=exc.reason)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def price_book_response(book: PriceBook) -> pb.GetPriceBookResponse:
    return pb.GetPriceBookResponse(
        version=book.version,
        currency=book.currency,
        markup_bps=book.markup_bps,
        prices=[
            pb.ModelPrice(
                model=name,
                input_price_nanos=m.input_price_nanos,
                output_price_nanos=m.output_price_nanos,
                resale_input_price_nanos=book.resale_input_price(m),
                resale_output_price_nanos=book.resale_output_price(m),
                max_output_tokens=m.max_output_tokens,
            )
            for name, m in sorted(book.models.items())
        ],
    )


class MeteringServicer(pb_grpc.MeteringServiceServicer):
    def __init__(self, metering: Metering) -> None:
        self.metering = metering
        self._book_cache: tuple[PriceBook, pb.GetPriceBookResponse] | None = None

    @_mapped
    async def GetPriceBook(
        self, request: pb.GetPriceBookRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPriceBookResponse:
        book = self.metering.current_price_book()
        cached = self._book_cache
        if cached is None or cached[0] is not book:  # billing asks often; a book changes rarely
            cached = self._book_cache = (book, price_book_response(book))
        return cached[1]

    @_mapped
    async def GetUsageSummary(
        self, request: pb.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageSummaryResponse:
        rows = await self.metering.usage_summary(request.account_id)
        return pb.GetUsageSummaryResponse(
            rows=[
                pb.UsageSummaryRow(
                    key_id=r.key_id,
                    model=r.model,
                    requests=r.requests,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    upstream_cost_nanos=r.upstream_cost_nanos,
                    resale_price_nanos=r.resale_price_nanos,
                )
                for r in rows
            ]
        )
