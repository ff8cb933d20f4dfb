"""Rating arithmetic, price-book version selection and the hash chain (pure domain)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tollgate_metering.domain import (
    DEMO_PRICE_BOOK,
    GENESIS_HASH,
    INT64_MAX,
    UsageFacts,
    apply_markup,
    chain_from,
    effective_book,
    parse_price_book,
    rate,
    utc_day,
    verify_chain,
)
from tollgate_metering.errors import InvalidPriceBook, InvalidUsage

prices = st.integers(min_value=0, max_value=10**12)
tokens = st.integers(min_value=0, max_value=10**7)
markups = st.integers(min_value=0, max_value=1_000_000)
#: Low enough that 10^7 tokens at a 100x markup stay within int64 (the rating refuses amounts beyond it).
small_prices = st.integers(min_value=0, max_value=10**9)


def _book(markup_bps: int = 2000, input_price: int = 150, output_price: int = 600, **extra: object):
    return parse_price_book(
        {
            "version": "t-1",
            "currency": "USD",
            "markup_bps": markup_bps,
            "models": {"m": {"input_price_nanos": input_price, "output_price_nanos": output_price,
                             "max_output_tokens": 4096}},
            **extra,
        }
    )


class TestMarkup:
    def test_twenty_percent_on_a_round_amount_is_exact(self) -> None:
        assert apply_markup(450_000, 2000) == 540_000

    def test_a_fraction_of_a_nano_rounds_up(self) -> None:
        assert apply_markup(1, 2000) == 2  # 1.2 → 2
        assert apply_markup(5, 2000) == 6  # exactly 6.0 stays 6
        assert apply_markup(7, 1) == 8  # 7.0007 → 8
        assert apply_markup(0, 2000) == 0

    def test_big_amounts_stay_exact(self) -> None:
        # A float would lose the last digits here: 1e18 + 1 does not survive float arithmetic.
        assert apply_markup(10**18 + 1, 2000) == 1_200_000_000_000_000_002
        assert apply_markup(10**18 + 5, 2000) == 1_200_000_000_000_000_006

    def test_no_markup_is_the_cost(self) -> None:
        assert apply_markup(123_456_789, 0) == 123_456_789

    @given(cost=st.integers(min_value=0, max_value=10**19), markup=markups)
    def test_resale_covers_cost_and_overshoots_by_at_most_one_nano(self, cost: int, markup: int) -> None:
        resale = apply_markup(cost, markup)
        assert resale >= cost
        # resale − cost ≤ what the markup allows (cost × markup / 10000, exactly) + 1 nano of rounding
        assert (resale - cost) * 10_000 <= cost * markup + 10_000
        assert resale * 10_000 >= cost * (10_000 + markup)  # never rounded down


class TestRate:
    def test_demo_book_gpt_4o_mini(self) -> None:
        rating = rate(DEMO_PRICE_BOOK, "gpt-4o-mini", UsageFacts(prompt_tokens=1000, completion_tokens=500))
        assert rating.upstream_cost_nanos == 1000 * 150 + 500 * 600 == 450_000
        assert rating.resale_price_nanos == 540_000
        assert (rating.price_book_version, rating.currency, rating.markup_bps) == ("demo-embed-2026-12", "USD", 2000)
        assert (rating.input_price_nanos, rating.output_price_nanos) == (150, 600)
        assert rating.priced

    def test_rounding_up_on_an_odd_cost(self) -> None:
        rating = rate(_book(markup_bps=2000, input_price=1, output_price=1), "m", UsageFacts(1, 1))
        assert (rating.upstream_cost_nanos, rating.resale_price_nanos) == (2, 3)  # 2.4 → 3

    def test_an_anthropic_call_with_cache_reads_is_charged_the_cache_price(self) -> None:
        # The held-out case: 1,000 of 1,028 prompt tokens read from Anthropic's cache (0.1x input).
        rating = rate(DEMO_PRICE_BOOK, "claude-3-5-haiku", UsageFacts(1028, 10, cached_prompt_tokens=1000))
        assert rating.upstream_cost_nanos == 28 * 800 + 1000 * 80 + 10 * 4000 == 142_400
        full_input = rate(DEMO_PRICE_BOOK, "claude-3-5-haiku", UsageFacts(1028, 10))
        assert full_input.upstream_cost_nanos == 1028 * 800 + 10 * 4000 == 862_400  # what it used to be charged
        assert (rating.cached_input_price_nanos, rating.cache_write_price_nanos) == (80, 1000)
        assert rating.resale_price_nanos == apply_markup(142_400, 2000)

    def test_cache_writes_are_charged_the_write_price(self) -> None:
        rating = rate(DEMO_PRICE_BOOK, "claude-3-5-haiku",
                      UsageFacts(2000, 0, cached_prompt_tokens=500, cache_write_tokens=1200))
        assert rating.upstream_cost_nanos == 300 * 800 + 500 * 80 + 1200 * 1000

    def test_openai_cached_input_is_half_price(self) -> None:
        rating = rate(DEMO_PRICE_BOOK, "gpt-4o", UsageFacts(2000, 100, cached_prompt_tokens=1500))
        assert rating.upstream_cost_nanos == 500 * 2500 + 1500 * 1250 + 100 * 10_000

    def test_a_model_without_cache_prices_falls_back_to_the_input_price(self) -> None:
        book = _book(input_price=150, output_price=600)
        plain = rate(book, "m", UsageFacts(2000, 100))
        cached = rate(book, "m", UsageFacts(2000, 100, cached_prompt_tokens=1500, cache_write_tokens=300))
        assert cached.upstream_cost_nanos == plain.upstream_cost_nanos == 2000 * 150 + 100 * 600
        assert (cached.cached_input_price_nanos, cached.cache_write_price_nanos, cached.reasoning_price_nanos) == (
            150, 150, 600)

    def test_reasoning_has_its_own_price_when_the_book_sets_one(self) -> None:
        book = parse_price_book({"version": "r", "currency": "USD", "markup_bps": 0, "models": {"m": {
            "input_price_nanos": 1, "output_price_nanos": 10, "reasoning_price_nanos": 30, "max_output_tokens": 9}}})
        assert rate(book, "m", UsageFacts(0, 100, reasoning_tokens=80)).upstream_cost_nanos == 20 * 10 + 80 * 30

    def test_cache_counts_beyond_the_prompt_never_charge_more_than_the_prompt(self) -> None:
        # A provider reporting more cache reads + writes than prompt tokens: reads first, writes take the rest.
        rating = rate(DEMO_PRICE_BOOK, "claude-3-5-haiku",
                      UsageFacts(100, 0, cached_prompt_tokens=80, cache_write_tokens=500))
        assert rating.upstream_cost_nanos == 80 * 80 + 20 * 1000

    def test_a_book_without_cache_prices_keeps_its_content_hash(self) -> None:
        # Versions stored before cache prices existed must keep their content (and sha256) byte for byte.
        book = _book()
        assert set(book.content()["models"]["m"]) == {"input_price_nanos", "output_price_nanos", "max_output_tokens"}
        assert type(book).from_content(book.content()) == book
        assert type(DEMO_PRICE_BOOK).from_content(DEMO_PRICE_BOOK.content()) == DEMO_PRICE_BOOK

    def test_cache_prices_are_validated_like_the_others(self) -> None:
        from tollgate_metering.errors import InvalidPriceBook

        with pytest.raises(InvalidPriceBook, match="cached_input_price_nanos"):
            parse_price_book({"version": "x", "currency": "USD", "markup_bps": 0, "models": {"m": {
                "input_price_nanos": 1, "output_price_nanos": 1, "max_output_tokens": 1,
                "cached_input_price_nanos": 0.5}}})

    @given(prompt=tokens, cached=tokens, written=tokens, completion=tokens, reasoning=tokens,
           input_price=prices, read_price=prices, write_price=prices, output_price=prices, markup=markups)
    def test_a_hold_at_the_highest_prompt_and_output_prices_covers_any_mix(
        self, prompt: int, cached: int, written: int, completion: int, reasoning: int, input_price: int,
        read_price: int, write_price: int, output_price: int, markup: int,
    ) -> None:
        """Billing prices a hold's prompt at max(input, cache read, cache write) resale and its output at
        max(output, reasoning): never below the rated price, however the tokens split."""
        book = parse_price_book({"version": "h", "currency": "USD", "markup_bps": markup, "models": {"m": {
            "input_price_nanos": input_price, "output_price_nanos": output_price, "max_output_tokens": 9,
            "cached_input_price_nanos": read_price, "cache_write_price_nanos": write_price}}})
        m = book.models["m"]
        usage = UsageFacts(prompt, completion, cached, reasoning, written)
        hold = prompt * max(book.resale_input_price(m), book.resale_cache_read_price(m),
                            book.resale_cache_write_price(m)) + completion * max(
            book.resale_output_price(m), book.resale_reasoning_price(m))
        assert rate(book, "m", usage).resale_price_nanos <= hold

    def test_reasoning_tokens_are_part_of_completion(self) -> None:
        assert rate(DEMO_PRICE_BOOK, "gpt-4o", UsageFacts(0, 100, reasoning_tokens=80)).upstream_cost_nanos == 1_000_000

    def test_unknown_model_rates_at_zero_and_is_marked_unpriced(self) -> None:
        rating = rate(DEMO_PRICE_BOOK, "no-such-model", UsageFacts(1000, 1000))
        assert not rating.priced
        assert (rating.upstream_cost_nanos, rating.resale_price_nanos) == (0, 0)
        assert rating.price_book_version == "demo-embed-2026-12"

    def test_negative_tokens_are_refused(self) -> None:
        with pytest.raises(InvalidUsage):
            rate(DEMO_PRICE_BOOK, "gpt-4o", UsageFacts(-1, 0))

    def test_an_amount_beyond_int64_is_refused_not_wrapped(self) -> None:
        with pytest.raises(InvalidUsage, match="64-bit"):
            rate(_book(input_price=10**12), "m", UsageFacts(10**7 * 10**3, 0))

    def test_big_but_representable_usage_is_exact(self) -> None:
        rating = rate(_book(input_price=10**12, output_price=10**12, markup_bps=0), "m", UsageFacts(10**6, 10**6))
        assert rating.upstream_cost_nanos == rating.resale_price_nanos == 2 * 10**18 <= INT64_MAX

    @given(prompt=tokens, completion=tokens, input_price=prices, output_price=prices, markup=markups)
    def test_a_hold_from_resale_unit_prices_never_falls_below_the_rated_price(
        self, prompt: int, completion: int, input_price: int, output_price: int, markup: int
    ) -> None:
        """Billing holds ``tokens × per-token resale price``; the rated charge must fit inside that hold."""
        book = _book(markup_bps=markup, input_price=input_price, output_price=output_price)
        model = book.models["m"]
        hold = prompt * book.resale_input_price(model) + completion * book.resale_output_price(model)
        try:
            rating = rate(book, "m", UsageFacts(prompt, completion))
        except InvalidUsage:
            return  # beyond int64: refused, never charged
        assert rating.upstream_cost_nanos <= rating.resale_price_nanos <= hold


class TestEffectiveVersion:
    def test_the_version_in_force_when_the_event_happened_rates_it(self) -> None:
        old = _book()
        new = dataclasses.replace(_book(markup_bps=3000), version="t-2", effective_from_unix_ms=1_000)
        assert effective_book([old, new], 999).version == "t-1"
        assert effective_book([old, new], 1_000).version == "t-2"
        assert effective_book([old, new], 10**13).version == "t-2"

    def test_an_event_older_than_every_version_uses_the_earliest(self) -> None:
        a = dataclasses.replace(_book(), effective_from_unix_ms=5_000)
        b = dataclasses.replace(_book(), version="t-2", effective_from_unix_ms=9_000)
        assert effective_book([b, a], 1).version == "t-1"

    def test_equal_start_times_pick_the_later_loaded(self) -> None:
        a, b = _book(), dataclasses.replace(_book(), version="t-2")
        assert effective_book([a, b], 10).version == "t-2"


def test_utc_day_buckets() -> None:
    assert utc_day(1_795_176_000_000) == "2026-11-20"
    assert utc_day(1_795_219_199_999) == "2026-11-20"  # 23:59:59.999Z
    assert utc_day(1_795_219_200_000) == "2026-11-21"


class TestChain:
    ITEMS = [(f"ev{i}", "t", "//tollgate/ingress", "acc", "2026-11-20T12:00:00Z", bytes([i]) * 3) for i in range(4)]

    def test_a_fresh_chain_verifies_and_links_from_genesis(self) -> None:
        events = chain_from("acc", None, self.ITEMS)
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert events[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
        assert verify_chain("acc", events, (4, events[-1].hash)) == []

    def test_continuing_from_a_head_equals_building_in_one_go(self) -> None:
        whole = chain_from("acc", None, self.ITEMS)
        first = chain_from("acc", None, self.ITEMS[:2])
        rest = chain_from("acc", (2, first[-1].hash), self.ITEMS[2:])
        assert first + rest == whole

    def test_an_edited_payload_is_detected(self) -> None:
        events = chain_from("acc", None, self.ITEMS)
        events[1] = events[1]._replace(data=b"forged")
        assert [(p.seq, p.kind) for p in verify_chain("acc", events)] == [(2, "edited")]

    def test_a_removed_event_is_a_gap(self) -> None:
        events = chain_from("acc", None, self.ITEMS)
        kinds = {p.kind for p in verify_chain("acc", [events[0], *events[2:]])}
        assert kinds == {"gap", "broken_link"}

    def test_a_cut_tail_is_caught_by_the_recorded_head(self) -> None:
        events = chain_from("acc", None, self.ITEMS)
        assert [p.kind for p in verify_chain("acc", events[:3], (4, events[-1].hash))] == ["truncated"]

    def test_rehashing_an_edit_still_breaks_the_next_link(self) -> None:
        events = chain_from("acc", None, self.ITEMS)
        forged = chain_from("acc", (1, events[0].hash), [(*self.ITEMS[1][:5], b"forged")])[0]
        events[1] = forged
        assert [(p.seq, p.kind) for p in verify_chain("acc", events)] == [(3, "broken_link")]


class TestPerModelMarkup:
    """A model entry may carry its own ``markup_bps``; the book's applies to the others."""

    def _book(self, model_markup: int | None) -> object:
        mine: dict[str, object] = {"input_price_nanos": 100, "output_price_nanos": 400, "max_output_tokens": 8}
        if model_markup is not None:
            mine["markup_bps"] = model_markup
        return parse_price_book({"version": "pm", "currency": "USD", "markup_bps": 2000, "models": {
            "cheap": mine,
            "plain": {"input_price_nanos": 100, "output_price_nanos": 400, "max_output_tokens": 8}}})

    def test_a_models_own_markup_rates_it_and_the_book_markup_rates_the_rest(self) -> None:
        book = self._book(5000)
        cheap = rate(book, "cheap", UsageFacts(10, 10))  # type: ignore[arg-type]
        plain = rate(book, "plain", UsageFacts(10, 10))  # type: ignore[arg-type]
        assert (cheap.upstream_cost_nanos, cheap.resale_price_nanos, cheap.markup_bps) == (5000, 7500, 5000)
        assert (plain.upstream_cost_nanos, plain.resale_price_nanos, plain.markup_bps) == (5000, 6000, 2000)

    def test_the_per_token_resale_prices_follow_the_models_markup(self) -> None:
        book = self._book(5000)
        m = book.models["cheap"]  # type: ignore[attr-defined]
        assert (book.resale_input_price(m), book.resale_output_price(m)) == (150, 600)  # type: ignore[attr-defined]

    def test_a_book_without_model_markups_keeps_its_content_hash(self) -> None:
        """Old books stored by version must keep meaning what they meant: no new key appears in their content
        (the demo book's hash is the one it had before per-model markups existed)."""
        assert "markup_bps" not in self._book(None).content()["models"]["cheap"]  # type: ignore[attr-defined]
        assert DEMO_PRICE_BOOK.content_sha256() == "52c5e7161c69cf8758c9c57f974a8b94a77b18cc02ba0124f5ca990f1c9eb3b0"

    def test_the_model_markup_round_trips_through_stored_content(self) -> None:
        book = self._book(750)
        again = type(book).from_content(book.content())  # type: ignore[attr-defined]
        assert again == book and again.models["cheap"].markup_bps == 750

    @pytest.mark.parametrize("bad", [-1, 1_000_001, 1.5, True])
    def test_a_bad_model_markup_is_refused(self, bad: object) -> None:
        with pytest.raises(InvalidPriceBook, match=r"models\.cheap\.markup_bps"):
            self._book(bad)  # type: ignore[arg-type]

    @given(prompt=tokens, cached=tokens, written=tokens, completion=tokens, reasoning=tokens,
           input_price=small_prices, write_price=small_prices, output_price=small_prices, book_markup=markups,
           model_markup=markups)
    def test_the_hold_stays_an_upper_bound_with_a_model_markup(
        self, prompt: int, cached: int, written: int, completion: int, reasoning: int, input_price: int,
        write_price: int, output_price: int, book_markup: int, model_markup: int,
    ) -> None:
        book = parse_price_book({"version": "h", "currency": "USD", "markup_bps": book_markup, "models": {"m": {
            "input_price_nanos": input_price, "output_price_nanos": output_price, "max_output_tokens": 9,
            "cache_write_price_nanos": write_price, "markup_bps": model_markup}}})
        m = book.models["m"]
        hold = prompt * max(book.resale_input_price(m), book.resale_cache_read_price(m),
                            book.resale_cache_write_price(m)) + completion * max(
            book.resale_output_price(m), book.resale_reasoning_price(m))
        assert rate(book, "m", UsageFacts(prompt, completion, cached, reasoning, written)).resale_price_nanos <= hold
