"""Billing's copy of metering's price book: what a hold charges per prompt and output token."""

from __future__ import annotations

from tollgate.metering.v1 import metering_service_pb2 as mpb
from tollgate_billing.domain import hold_amount
from tollgate_billing.price_book import price_book_from_proto


def _reply(**prices: int) -> mpb.GetPriceBookResponse:
    base = dict(model="claude", input_price_nanos=800, output_price_nanos=4000, resale_input_price_nanos=960,
                resale_output_price_nanos=4800, max_output_tokens=100, resale_cached_input_price_nanos=96,
                resale_cache_write_price_nanos=1200, resale_reasoning_price_nanos=4800)
    base.update(prices)
    return mpb.GetPriceBookResponse(version="v", currency="USD", markup_bps=2000, prices=[mpb.ModelPrice(**base)])


def test_a_hold_prices_prompt_tokens_at_the_cache_write_price_when_it_is_the_highest() -> None:
    # Anthropic's cache writes cost 1.25x input: a prompt that turns out to be all cache writes must stay
    # within the hold, so the hold prices every prompt token at the write price.
    price = price_book_from_proto(_reply()).price_for("claude")
    assert (price.resale_input_price_nanos, price.resale_output_price_nanos) == (1200, 4800)
    assert hold_amount(price, 1000, 10) == 1000 * 1200 + 10 * 4800


def test_a_higher_reasoning_price_raises_the_output_price_of_the_hold() -> None:
    price = price_book_from_proto(_reply(resale_reasoning_price_nanos=9000)).price_for("claude")
    assert price.resale_output_price_nanos == 9000


def test_cheaper_cache_reads_never_lower_the_hold_below_the_input_price() -> None:
    price = price_book_from_proto(_reply(resale_cache_write_price_nanos=0)).price_for("claude")
    assert price.resale_input_price_nanos == 960


def test_a_metering_without_cache_prices_holds_at_the_input_price() -> None:
    # An older metering sends no cache fields (0): the input price stays the hold's prompt price.
    price = price_book_from_proto(
        _reply(resale_cached_input_price_nanos=0, resale_cache_write_price_nanos=0, resale_reasoning_price_nanos=0)
    ).price_for("claude")
    assert (price.resale_input_price_nanos, price.resale_output_price_nanos) == (960, 4800)
