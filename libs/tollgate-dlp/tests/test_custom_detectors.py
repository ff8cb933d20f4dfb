"""Per-account custom detectors: regular expressions and keyword lists compiled into the same engine as the
built-ins, and patterns refused with a clear message when they can't be compiled or could run away in ``re``."""

from __future__ import annotations

import pytest
from tollgate_dlp.detectors import CustomDetector
from tollgate_dlp.engine import build_scanner

ENGINES = ("hyperscan", "python")


@pytest.mark.parametrize("engine", ENGINES)
def test_regex_and_keywords_are_found_beside_the_builtins(engine: str) -> None:
    scanner = build_scanner(
        [
            CustomDetector(name="custom:employee_id", pattern=r"EMP-[0-9]{6}", label="EMPLOYEE"),
            CustomDetector(name="custom:codename", keywords=("Blue Falcon", "nightjar")),
        ],
        engine=engine,
    )
    text = "EMP-004211 (jo@example.com) works on blue falcon, not Nightjars; NIGHTJAR ships."
    found = [(m.detector.name, m.detector.label, text[m.start : m.end]) for m in scanner.scan(text)]
    assert found == [
        ("custom:employee_id", "EMPLOYEE", "EMP-004211"),
        ("email", "EMAIL", "jo@example.com"),
        ("custom:codename", "CODENAME", "blue falcon"),  # case-insensitive, whole words only
        ("custom:codename", "CODENAME", "NIGHTJAR"),
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_custom_match_inside_a_builtin_loses_to_the_earlier_start(engine: str) -> None:
    scanner = build_scanner([CustomDetector(name="custom:bin", pattern=r"411111")], engine=engine)
    text = "card 4111111111111111"
    assert [(m.detector.name, m.start, m.end) for m in scanner.scan(text)] == [("payment_card", 5, 21)]


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        (CustomDetector(name="custom:bad", pattern="EMP-[0-9"), "invalid regular expression"),
        (CustomDetector(name="custom:slow", pattern=r"(a+)+b"), "nested repetition"),
        (CustomDetector(name="custom:slow2", pattern=r"(?:x|y*)*z"), "nested repetition"),
        (CustomDetector(name="custom:look", pattern=r"(?<=EMP-)[0-9]+"), "look-around"),
        (CustomDetector(name="custom:ref", pattern=r"(a)\1"), "back-references"),
        (CustomDetector(name="custom:empty", pattern=r"x?"), "empty string"),
        (CustomDetector(name="custom:both", pattern="x", keywords=("y",)), "either a pattern or keywords"),
        (CustomDetector(name="custom:none"), "either a pattern or keywords"),
        (CustomDetector(name="employee_id", pattern="x"), "custom:employee_id"),
        (CustomDetector(name="custom:kw", keywords=("",)), "keywords must be"),
        (CustomDetector(name="custom:long", pattern="a" * 1001), "longer than"),
    ],
)
def test_bad_custom_detectors_are_refused_with_a_clear_message(custom: CustomDetector, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_scanner([custom])


def test_hyperscan_only_limits_are_refused_too() -> None:
    # re (3.11) accepts possessive quantifiers, Hyperscan does not compile them: refused on every engine, so an
    # account's detectors never depend on which engine a replica happens to run.
    with pytest.raises(ValueError, match="not supported by the scan engine"):
        build_scanner([CustomDetector(name="custom:possessive", pattern=r"EMP-[0-9]++")], engine="python")


def test_duplicate_names_are_refused() -> None:
    twice = [CustomDetector(name="custom:x", pattern="x1"), CustomDetector(name="custom:x", pattern="x2")]
    with pytest.raises(ValueError, match="unique"):
        build_scanner(twice)
