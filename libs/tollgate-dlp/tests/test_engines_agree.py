"""The Hyperscan engine and the pure-``re`` engine report identical findings: on random text built from
sensitive fragments, separators and non-ASCII characters (Hypothesis), and on every sentence of the corpus."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tollgate_dlp.detectors import CustomDetector
from tollgate_dlp.engine import build_scanner

from bench.dlp_corpus import generate

CUSTOM = (
    CustomDetector(name="custom:employee_id", pattern=r"EMP-[0-9]{6}"),
    CustomDetector(name="custom:project", keywords=("Blue Falcon", "nightjar")),
    # ASCII patterns that still match non-ASCII characters under re (\W, ".", a negated class)
    CustomDetector(name="custom:ticket", pattern=r"T\W[0-9]{3}"),
    CustomDetector(name="custom:xy", pattern=r"X.[^a]Y"),
)
HYPERSCAN = build_scanner(CUSTOM, engine="hyperscan")
PYTHON = build_scanner(CUSTOM, engine="python")
# A non-ASCII custom literal makes the Hyperscan engine scan UTF-8 bytes and map offsets back (the other path).
CUSTOM_UNICODE = (*CUSTOM, CustomDetector(name="custom:size", keywords=("Größe",)))
HYPERSCAN_UTF8 = build_scanner(CUSTOM_UNICODE, engine="hyperscan")
PYTHON_UTF8 = build_scanner(CUSTOM_UNICODE, engine="python")

FRAGMENTS = [
    "4111 1111 1111 1111", "4111111111111111", "378282246310005", "5555-5555-5555-4444", "4111111111111112",
    "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "DE00370400440532013000",
    "536-90-4399", "536904399", "SSN ", "000-12-3456",
    "+44 20 7946 0958", "(415) 555-2671", "415.555.2671", "01 42 68 53 00", "+1",
    "10.0.0.1", "256.1.1.1", "1.2.3.4.5", "v1.2.3.4", "2001:db8::1", "::1", "10:30:45",
    "jo.doe@example.com", "zoë@exämple.de", "@", "a@b", "x@y.co",
    "AKIAIOSFODNN7EXAMPLE", "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6q",
    "ghp_" + "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2",
    "sk-" + "proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1", "sk-" + "ant-api03-Zq8_Rt5Yu7Io9Pa1Sd3Fg5Hj7",
    "xox" + "b-1234567890-AbCdEfGhIj", "tg-" + "Qm9vYmFyQmF6Qm9vYmFyQmF6", "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.SflKxwRJSMeKKF2QT4fw",
    "password=", "api_key: \"", "Xk9#mP2vL7q!zz", "token=", "EMP-123456", "Blue Falcon", "nightjar", "Größe", "GRÖSSE",
    "Té123", "T 123", "XééY", "X\U0001f600\U0001f600Y",
    " ", "  ", "-", ".", ",", ":", "\n", "_", "+", "(", ")", "é", "日本", "\U0001f600", "\ud800",
]  # fmt: skip

texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet="0123456789 -.:+@abcXYZ_é", max_size=8)), max_size=14
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_engines_agree_on_generated_text(text: str) -> None:
    assert HYPERSCAN.scan(text) == PYTHON.scan(text)
    assert HYPERSCAN_UTF8.scan(text) == PYTHON_UTF8.scan(text)


def test_engines_agree_on_the_corpus() -> None:
    samples = generate(800)
    disagreements = [s.text for s in samples if HYPERSCAN.scan(s.text) != PYTHON.scan(s.text)]
    assert disagreements == []
    assert [s.text for s in samples if HYPERSCAN_UTF8.scan(s.text) != PYTHON_UTF8.scan(s.text)] == []
    assert sum(len(HYPERSCAN.scan(s.text)) for s in samples) > 300  # the corpus does exercise the detectors


def test_engine_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICY_ENGINE", "python")
    assert build_scanner().engine == "python"
    monkeypatch.setenv("POLICY_ENGINE", "auto")
    assert build_scanner().engine == "hyperscan"
    assert build_scanner(engine="hyperscan").engine == "hyperscan"
    with pytest.raises(ValueError, match="unknown engine"):
        build_scanner(engine="pcre")
