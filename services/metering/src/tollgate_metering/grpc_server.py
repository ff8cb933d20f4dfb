"""``tollgate.metering.v1.MeteringService``: protobuf ↔ application, and the one place errors become gRPC statuses."""

from __future__ import annotations

import grpc
from tollgate.metering.v1 import metering_service_pb2 as pb
from tollgate.metering.v1 import metering_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import StatusTable, rpc
from tollgate_common.internal_auth import InternalAuth, guard_servicer

from .application import Metering
from .domain import PriceBook
from .errors import InvalidRequest, InvalidUsage, MeteringError, PriceBookError

__all__ = ["CALLERS", "FULL_NAME", "STATUSES", "MeteringServicer", "price_book_response"]

FULL_NAME = "tollgate.metering.v1.MeteringService"

#: The error hierarchy → gRPC status codes, once. A subclass not listed takes its nearest listed base.
STATUSES = StatusTable({
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidUsage: grpc.StatusCode.INVALID_ARGUMENT,
    PriceBookError: grpc.StatusCode.FAILED_PRECONDITION,
    MeteringError: grpc.StatusCode.INTERNAL,
})
_mapped = rpc(STATUSES)

#: Who may call what (see tollgate_common.internal_auth). ``ops``: an operator's tool holding the internal secret
#: (reads only).
CALLERS: dict[str, frozenset[str]] = {
    "GetPriceBook": frozenset({"billing", "router", "ops"}),
    "GetUsageSummary": frozenset({"ingress", "ops"}),
    "GetUsageReport": frozenset({"ingress", "ops"}),
}


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
                cached_input_price_nanos=m.cache_read_price,
                cache_write_price_nanos=m.cache_write_price,
                reasoning_price_nanos=m.reasoning_price,
                resale_cached_input_price_nanos=book.resale_cache_read_price(m),
                resale_cache_write_price_nanos=book.resale_cache_write_price(m),
                resale_reasoning_price_nanos=book.resale_reasoning_price(m),
                markup_bps=book.markup_of(m),
            )
            for name, m in sorted(book.models.items())
        ],
    )


@guard_servicer(CALLERS, pb_grpc.MeteringServiceServicer)
class MeteringServicer(pb_grpc.MeteringServiceServicer):
    def __init__(self, metering: Metering, internal_auth: InternalAuth) -> None:
        self.metering = metering
        self.internal_auth = internal_auth
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

    @_mapped
    async def GetUsageReport(
        self, request: pb.GetUsageReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageReportResponse:
        rows, next_token = await self.metering.usage_report(
            request.account_id, request.key_id, request.from_unix_ms, request.to_unix_ms, list(request.group_by),
            request.page_size, request.page_token,
        )
        return pb.GetUsageReportResponse(
            rows=[
                pb.UsageReportRow(
                    day=r.day, model=r.model, key_id=r.key_id, team=r.team, project=r.project, tag=r.tag,
                    currency=r.currency, requests=r.requests, prompt_tokens=r.prompt_tokens,
                    cached_prompt_tokens=r.cached_prompt_tokens, cache_write_tokens=r.cache_write_tokens,
                    completion_tokens=r.completion_tokens, reasoning_tokens=r.reasoning_tokens,
                    upstream_cost_nanos=r.upstream_cost_nanos, resale_price_nanos=r.resale_price_nanos,
                    margin_nanos=r.margin_nanos,
                )
                for r in rows
            ],
            next_page_token=next_token,
        )
