"""Billing's cached copy of metering's price book, fetched over gRPC and refreshed in the background.

Holds are priced from this copy so Authorize never calls metering on the hot path. Until the first fetch succeeds
there is no book and Authorize answers UNAVAILABLE (``price_book_unavailable``); after that a failed refresh keeps
the last good book (metering being down for a minute must not stop the gateway).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from tollgate.metering.v1 import metering_service_pb2, metering_service_pb2_grpc
from tollgate_common.grpc import open_channel
from tollgate_common.internal_auth import InternalAuth

from .domain import ModelPrice, PriceBook

__all__ = ["MeteringPriceBook", "price_book_from_proto"]

log = logging.getLogger(__name__)

#: Until the first book arrives, ask again this often (metering may start after billing).
_FIRST_LOAD_RETRY_SECONDS = 1.0


def price_book_from_proto(reply: metering_service_pb2.GetPriceBookResponse) -> PriceBook:
    """Billing's view of the book: for each model the most a prompt token and an output token can cost.

    A hold is placed before anyone knows how many prompt tokens the provider will read from or write to its
    cache, or how many output tokens will be reasoning. Metering rates each kind at its own price, and a cache
    write costs MORE than plain input (Anthropic: 1.25×), so the hold prices every prompt token at the highest of
    the input, cache-read and cache-write resale prices, and every output token at the higher of output and
    reasoning: the hold stays an upper bound of the rated price whatever the mix turns out to be.
    """
    return PriceBook(
        version=reply.version,
        currency=reply.currency or "USD",
        prices={
            p.model: ModelPrice(
                model=p.model,
                resale_input_price_nanos=max(
                    p.resale_input_price_nanos, p.resale_cached_input_price_nanos, p.resale_cache_write_price_nanos
                ),
                resale_output_price_nanos=max(p.resale_output_price_nanos, p.resale_reasoning_price_nanos),
                max_output_tokens=p.max_output_tokens,
            )
            for p in reply.prices
        },
    )


class MeteringPriceBook:
    """A :class:`~tollgate_billing.application.PriceSource` backed by ``MeteringService.GetPriceBook``."""

    def __init__(
        self,
        metering_addr: str,
        refresh_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        *,
        auth: InternalAuth | None = None,
    ) -> None:
        self.metering_addr = metering_addr
        self.auth = auth
        self.refresh_seconds = refresh_seconds
        self.timeout_seconds = timeout_seconds
        self._book: PriceBook | None = None
        self._channel: grpc.aio.Channel | None = None

    def current(self) -> PriceBook | None:
        return self._book

    async def refresh(self) -> bool:
        """Fetch the book once; True on success. Failures are logged, never raised."""
        if self._channel is None:
            self._channel = open_channel(self.metering_addr, self.auth)
        stub = metering_service_pb2_grpc.MeteringServiceStub(self._channel)
        try:
            reply = await stub.GetPriceBook(metering_service_pb2.GetPriceBookRequest(), timeout=self.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "price book fetch from metering failed",
                extra={"metering_addr": self.metering_addr, "code": exc.code().name, "have_book": bool(self._book)},
            )
            return False
        book = price_book_from_proto(reply)
        if self._book is None or self._book.version != book.version:
            log.info("price book loaded", extra={"version": book.version, "models": len(book.prices)})
        self._book = book
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            delay = self.refresh_seconds if self._book is not None else _FIRST_LOAD_RETRY_SECONDS
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except TimeoutError:
                pass
            await self.refresh()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
