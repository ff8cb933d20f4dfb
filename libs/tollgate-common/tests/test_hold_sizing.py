"""The shared hold-sizing rule: the figures billing's Authorize and an ingress lease both reserve."""

import pytest
from tollgate_common.hold_sizing import (
    INT64_MAX,
    ModelPrice,
    SizingError,
    SizingFailure,
    hold_amount,
    size_for_candidates,
)

CHEAP = ModelPrice("cheap", resale_input_price_nanos=3, resale_output_price_nanos=11, max_output_tokens=500)
DEAR = ModelPrice("dear", resale_input_price_nanos=30, resale_output_price_nanos=110, max_output_tokens=100)
PRICES = {p.model: p for p in (CHEAP, DEAR)}


def test_hold_uses_the_request_cap_else_the_model_cap() -> None:
    assert hold_amount(CHEAP, 100, 0) == 100 * 3 + 500 * 11
    assert hold_amount(CHEAP, 100, 7) == 100 * 3 + 7 * 11


def test_the_most_expensive_candidate_sizes_the_hold() -> None:
    held = size_for_candidates(PRICES, (), ["cheap", "dear"], 10, 0)
    assert (held.model, held.amount_nanos, held.output_tokens) == ("dear", 10 * 30 + 100 * 110, 100)
    # With a request cap of 1000 output tokens the cheap model's larger cap no longer matters: dear still wins.
    assert size_for_candidates(PRICES, (), ["cheap", "dear"], 10, 1000).amount_nanos == 10 * 30 + 1000 * 110


@pytest.mark.parametrize(("allowed", "models", "failure"), [
    (frozenset({"cheap"}), ["cheap", "dear"], SizingFailure.MODEL_NOT_ALLOWED),
    ((), ["cheap", "unknown"], SizingFailure.MODEL_NOT_PRICED),
    ((), [], SizingFailure.INVALID_ARGUMENT),
])
def test_refusals_name_their_reason(allowed: frozenset[str], models: list[str], failure: SizingFailure) -> None:
    with pytest.raises(SizingError) as refused:
        size_for_candidates(PRICES, allowed, models, 10, 0)
    assert refused.value.failure is failure


def test_negative_and_overflowing_requests_are_refused() -> None:
    with pytest.raises(SizingError):
        hold_amount(CHEAP, -1, 0)
    with pytest.raises(SizingError):
        hold_amount(ModelPrice("x", INT64_MAX, 1, 1), 2, 0)
