"""Prompt-cache pricing end to end: the mock Anthropic upstream reports cache reads and writes, the router carries
them, metering rates each kind at its own price and billing charges exactly that (issue 13, "Money depth").

Before this, a call with 1,000 of its ~1,028 prompt tokens read from Anthropic's cache was charged every prompt
token at the full input price: about 8x what the provider bills for the prompt.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, price_book

pytestmark = pytest.mark.e2e

MODEL = "claude-3-5-haiku"
#: About 1,028 prompt tokens once the router has translated the request for Anthropic.
PROMPT = "hello " * 1020


@pytest.fixture(params=["platform", "pg_platform"])
def any_platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    """The same checks on SQLite and on PostgreSQL (billing and metering)."""
    platform: Platform = request.getfixturevalue(request.param)
    yield platform
    _mock_usage(platform)  # the knobs are the mock's, shared by every later test: reset them


def _mock_usage(platform: Platform, **counts: int) -> None:
    req = urllib.request.Request(f"{platform.mock_url}/_mock/usage", data=json.dumps(counts).encode(),
                                 method="PUT", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _price(platform: Platform) -> tuple[Any, int]:
    book = price_book(platform)
    return next(p for p in book.prices if p.model == MODEL), book.markup_bps


def _resale(cost: int, markup_bps: int) -> int:
    return -(-cost * (10_000 + markup_bps) // 10_000)


def test_an_anthropic_call_with_cache_reads_is_charged_the_cache_price(any_platform: Platform) -> None:
    platform = any_platform
    tenant = Tenant.create(platform)
    _mock_usage(platform, cached_tokens=1000)
    before = len(mock_calls(platform))

    reply = tenant.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=10
    )

    [served] = mock_calls(platform)[before:]
    usage = served["usage"]
    assert usage["cache_read_input_tokens"] == 1000 and usage["cache_creation_input_tokens"] == 0
    uncached, completion = usage["input_tokens"], usage["output_tokens"]
    assert 10 < uncached < 60  # ~1,028 prompt tokens, 1,000 of them cached
    assert reply.usage is not None and reply.usage.prompt_tokens == uncached + 1000
    assert reply.usage.prompt_tokens_details is not None and reply.usage.prompt_tokens_details.cached_tokens == 1000

    price, markup = _price(platform)
    assert (price.input_price_nanos, price.cached_input_price_nanos) == (800, 80)  # the demo book: 0.1x input
    expected = _resale(uncached * 800 + 1000 * 80 + completion * price.output_price_nanos, markup)
    full_input = _resale((uncached + 1000) * 800 + completion * price.output_price_nanos, markup)
    charged = 10 * NANOS - tenant.settle()["balance_nanos"]
    assert charged == expected
    assert full_input > 4 * charged  # what the same call cost before cache prices (~5x with the output)


def test_a_streamed_anthropic_call_that_writes_the_cache_is_charged_the_write_price(any_platform: Platform) -> None:
    platform = any_platform
    tenant = Tenant.create(platform)
    _mock_usage(platform, cached_tokens=200, cache_write_tokens=700)
    before = len(mock_calls(platform))

    chunks = list(tenant.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    ))

    [served] = mock_calls(platform)[before:]
    usage = served["usage"]
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (200, 700)
    uncached, completion = usage["input_tokens"], usage["output_tokens"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == uncached + 900

    price, markup = _price(platform)
    assert price.cache_write_price_nanos == 1000  # 1.25x input
    expected = _resale(uncached * 800 + 200 * 80 + 700 * 1000 + completion * price.output_price_nanos, markup)
    assert 10 * NANOS - tenant.settle()["balance_nanos"] == expected
