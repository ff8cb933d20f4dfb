from decimal import Decimal

from tollgate_common.money import amounts, nanos_to_text


def test_text_is_the_shortest_exact_decimal() -> None:
    assert nanos_to_text(1_500_000_000) == "1.5"
    assert nanos_to_text(10 * 10**9) == "10"
    assert nanos_to_text(1) == "0.000000001"
    assert nanos_to_text(-5) == "-0.000000005"
    assert nanos_to_text(0) == "0"
    for nanos in (123_456_789_012, -987_654_321, 2**63 - 1):
        assert Decimal(nanos_to_text(nanos)) * 10**9 == nanos


def test_amounts_give_each_amount_as_text_and_integer() -> None:
    assert amounts(limit=2_500_000_000, spent=0) == {
        "limit": "2.5", "limit_nanos": 2_500_000_000, "spent": "0", "spent_nanos": 0}
