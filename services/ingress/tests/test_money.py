"""Amounts at the edge: exact decimal text from integer nano-units, and exact parsing of client amounts."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tollgate_ingress.errors import InvalidRequest
from tollgate_ingress.money import ExactNumber, dumps_exact, nanos_to_text, parse_amount

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [(0, "0"), (10 * 10**9, "10"), (1_500_000_000, "1.5"), (1, "0.000000001"), (-5, "-0.000000005"),
     (123_456_789_012, "123.456789012"), (-(10**9), "-1"), (2**63 - 1, "9223372036.854775807")],
)
def test_known_renderings(nanos: int, text: str) -> None:
    assert nanos_to_text(nanos) == text


@given(INT64)
def test_nanos_to_json_number_text_round_trips_exactly(nanos: int) -> None:
    doc = dumps_exact({"balance": ExactNumber.of_nanos(nanos)})
    parsed = json.loads(doc, parse_float=Decimal, parse_int=Decimal)["balance"]
    assert parsed * 10**9 == nanos
    number = doc.removeprefix(b'{"balance":').removesuffix(b"}")
    assert number.strip(b"-.0123456789") == b""  # plain digits: never exponent notation


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_rendered_amount_parses_back_to_the_same_nanos(nanos: int) -> None:
    text = nanos_to_text(nanos)
    assert parse_amount(text, param="amount") == nanos
    assert parse_amount(json.loads(text, parse_float=Decimal, parse_int=Decimal), param="amount") == nanos


def test_dumps_exact_matches_orjson_for_everything_else() -> None:
    value = {"a": [1, "x", None, True, {"b": 2.5}], "label": 'quote " and \\ backslash', "n": ExactNumber("0.1")}
    doc = dumps_exact(value)
    assert json.loads(doc) == {**value, "n": 0.1}
    assert dumps_exact([1, "x"]) == orjson.dumps([1, "x"])


@pytest.mark.parametrize(
    ("value", "nanos"),
    [("10", 10 * 10**9), ("10.50", 10_500_000_000), (" 0.000000001 ", 1), (Decimal("0.1"), 100_000_000), (7, 7 * 10**9),
     (".5", 500_000_000), ("9223372036.854775807", 2**63 - 1)],
)
def test_parse_amount_accepts(value: object, nanos: int) -> None:
    assert parse_amount(value, param="amount") == nanos


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "1.0000000001", "abc", "1e3", "", None, True, 0.1, Decimal("NaN"), Decimal("Infinity"),
     "9223372036.854775808", Decimal("1e400"), [1]],
)
def test_parse_amount_rejects(value: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_amount(value, param="amount")
    assert err.value.param == "amount" and err.value.status == 400


def test_zero_allowed_only_when_asked() -> None:
    assert parse_amount("0", param="limit", allow_zero=True) == 0
    with pytest.raises(InvalidRequest, match="zero or more"):
        parse_amount("-0.5", param="limit", allow_zero=True)
