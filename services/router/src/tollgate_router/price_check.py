"""At start: every model the router can serve has a price in metering's price book, and the prices the providers
file declares agree with it.

Why: metering's price book is the one source of what a call costs (billing holds and metering rates from it); the
router's catalogue may also declare per-deployment prices, which routing uses (``strategy: price``,
``provider.max_price``) and ``/v1/models`` shows. A routable model missing from the book would be refused at
Authorize (``model_not_priced``) for every caller, and a deployment whose declared price differs from the book
would be routed, shown and billed on two different numbers. Both are operator mistakes best caught before the first
request, so ``python -m tollgate_router`` asks metering's ``GetPriceBook`` before it serves and exits 2 with every
problem listed (``ROUTER_PRICE_CHECK``: ``required``, the default; ``warn`` logs the problems and starts;
``off`` skips the check, e.g. a router benchmarked alone).

A declared price agrees when it equals the book's upstream price per token × 10^6 (the catalogue's prices are per
million tokens, the book's per token, both integer nano-units), in the same currency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from tollgate.metering.v1 import metering_service_pb2 as mpb
from tollgate.metering.v1 import metering_service_pb2_grpc as mpb_grpc
from tollgate_common.grpc import open_channel
from tollgate_common.internal_auth import InternalAuth

from .domain import Catalogue

__all__ = ["PRICE_CHECK_MODES", "PriceCheckFailed", "check_prices", "fetch_price_book", "price_problems"]

log = logging.getLogger(__name__)

PRICE_CHECK_MODES = ("required", "warn", "off")
_TOKENS_PER_MTOK = 1_000_000
_RETRY_SECONDS = 0.5


class PriceCheckFailed(Exception):
    """The catalogue and the price book disagree, or the book could not be read; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class _BookPrice:
    input_price_nanos: int
    output_price_nanos: int


def _units(nanos_per_mtok: int) -> str:
    """Nano-units per million tokens as a plain decimal amount (``2500000000`` → ``2.5``)."""
    whole, frac = divmod(nanos_per_mtok, 10**9)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def price_problems(catalogue: Catalogue, book: mpb.GetPriceBookResponse) -> list[str]:
    """Every disagreement between ``catalogue`` and ``book``, as sentences an operator can act on."""
    prices = {p.model: _BookPrice(p.input_price_nanos, p.output_price_nanos) for p in book.prices}
    problems: list[str] = []
    unpriced = [entry.name for entry in catalogue.models() if entry.name not in prices]
    if unpriced:
        problems.append(
            f"routable model(s) without a price in metering's price book (version {book.version}): "
            f"{', '.join(unpriced)}; every request for them would be refused (model_not_priced). Add them to "
            f"METERING_PRICE_BOOK_FILE as a new version, or remove them from the providers file"
        )
    declared = [
        route for route in catalogue.routes()
        if route.input_price_per_mtok_nanos is not None or route.output_price_per_mtok_nanos is not None
    ]
    if declared and catalogue.currency != book.currency:
        problems.append(
            f"the providers file's prices are in {catalogue.currency}, metering's price book (version "
            f"{book.version}) in {book.currency}"
        )
        return problems
    for route in declared:
        price = prices.get(route.model)
        if price is None:
            continue  # already reported as unpriced
        for kind, stated, per_token in (
            ("input", route.input_price_per_mtok_nanos, price.input_price_nanos),
            ("output", route.output_price_per_mtok_nanos, price.output_price_nanos),
        ):
            if stated is not None and stated != per_token * _TOKENS_PER_MTOK:
                problems.append(
                    f"deployment {route.name} of {route.model} declares {kind}_price_per_mtok "
                    f"{_units(stated)} {catalogue.currency}, metering's price book (version {book.version}) says "
                    f"{_units(per_token * _TOKENS_PER_MTOK)}: calls would be routed on one price and billed on "
                    f"the other. Make them agree (or drop the deployment's price)"
                )
    return problems


async def fetch_price_book(
    metering_addr: str, auth: InternalAuth | None, timeout_seconds: float
) -> mpb.GetPriceBookResponse:
    """Metering's current book, asked again every half second until ``timeout_seconds`` (metering may be starting
    too); :class:`PriceCheckFailed` when it never answers."""
    deadline = time.monotonic() + timeout_seconds
    channel = open_channel(metering_addr, auth)
    try:
        stub = mpb_grpc.MeteringServiceStub(channel)
        while True:
            left = deadline - time.monotonic()
            try:
                return await stub.GetPriceBook(mpb.GetPriceBookRequest(), timeout=max(min(left, 5.0), 0.1))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or left <= 0:
                    raise PriceCheckFailed([
                        f"cannot read metering's price book at {metering_addr} ({code.name}) within "
                        f"{timeout_seconds:g}s to check the catalogue's prices; start metering first, fix "
                        f"ROUTER_METERING_ADDR, or set ROUTER_PRICE_CHECK=warn or off"
                    ]) from None
            await asyncio.sleep(min(_RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
    finally:
        await channel.close()


async def check_prices(
    catalogue: Catalogue, metering_addr: str, auth: InternalAuth | None, *, mode: str, timeout_seconds: float
) -> None:
    """Run the check in ``mode``: ``required`` raises :class:`PriceCheckFailed`, ``warn`` logs, ``off`` skips."""
    if mode == "off":
        log.info("price check off: the catalogue is not compared with metering's price book")
        return
    try:
        book = await fetch_price_book(metering_addr, auth, timeout_seconds)
        problems = price_problems(catalogue, book)
    except PriceCheckFailed as exc:
        problems = exc.problems
    if not problems:
        log.info("every routable model is priced in metering's price book",
                 extra={"models": len(catalogue.models())})
        return
    if mode == "warn":
        for problem in problems:
            log.warning("price check: %s", problem)
        return
    raise PriceCheckFailed(problems)
