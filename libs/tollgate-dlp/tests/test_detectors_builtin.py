"""The detectors added for issue 4 (phone, IBAN, SSN, IP, more secrets, card brands): positives with exact spans,
near-misses that must stay quiet. Run on both engines: they must also agree (see test_engines_agree.py)."""

from __future__ import annotations

import base64
import json

import pytest
from tollgate_dlp.detectors import Match
from tollgate_dlp.engine import Scanner, build_scanner

SCANNERS = {name: build_scanner(engine=name) for name in ("hyperscan", "python")}


@pytest.fixture(params=sorted(SCANNERS))
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return SCANNERS[request.param]


def found(scanner: Scanner, text: str, detector: str | None = None) -> list[tuple[str, str]]:
    return [(m.detector.name, text[m.start : m.end]) for m in scanner.scan(text)
            if detector is None or m.detector.name == detector]  # fmt: skip


def _b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


JWT = (
    _b64url({"alg": "HS256", "typ": "JWT"}) + "." + _b64url({"sub": "42"}) + "." + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV"
)
NOT_JWT = _b64url({"typ": "JWT"}) + "." + _b64url({"sub": "42"}) + "." + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV"


@pytest.mark.parametrize(
    ("text", "detector", "value"),
    [
        ("Call +44 20 7946 0958 today", "phone", "+44 20 7946 0958"),
        ("E.164: +14155552671.", "phone", "+14155552671"),
        ("office (415) 555-2671", "phone", "(415) 555-2671"),
        ("cell 415-555-2671, thanks", "phone", "415-555-2671"),
        ("Paris 01 42 68 53 00", "phone", "01 42 68 53 00"),
        ("IBAN DE89 3704 0044 0532 0130 00 thanks", "iban", "DE89 3704 0044 0532 0130 00"),
        ("to GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
        ("SSN 536-90-4399", "ssn", "536-90-4399"),
        ("ssn: 536904399", "ssn", "536904399"),
        ("host 192.168.1.20 is down", "ip_address", "192.168.1.20"),
        ("ping 2001:db8:85a3::8a2e:370:7334.", "ip_address", "2001:db8:85a3::8a2e:370:7334"),
        ("loopback ::1 only", "ip_address", "::1"),
        ("link-local fe80::1 here", "ip_address", "fe80::1"),
        ("mc 5555 5555 5555 4444", "payment_card", "5555 5555 5555 4444"),
        ("mc2 2223003122003222", "payment_card", "2223003122003222"),
        ("amex 3782-822463-10005", "payment_card", "3782-822463-10005"),
        ("jcb 3530111333300000", "payment_card", "3530111333300000"),
        ("diners 30569309025904", "payment_card", "30569309025904"),
        ("discover 6011 1111 1111 1117", "payment_card", "6011 1111 1111 1117"),
        ("unionpay 6200000000000005", "payment_card", "6200000000000005"),
        (f"Authorization: Bearer {JWT}", "secret", JWT),
        ('db password="Xk9#mP2vL7q!zz" ok', "secret", "Xk9#mP2vL7q!zz"),
        ("API_KEY: 'a8F3kL0pQz7Yw2Rt'", "secret", "a8F3kL0pQz7Yw2Rt"),
    ],
)
def test_finds_the_value_with_its_exact_span(scanner: Scanner, text: str, detector: str, value: str) -> None:
    assert found(scanner, text, detector) == [(detector, value)]


@pytest.mark.parametrize(
    ("text", "detector"),
    [
        ("Invoice INV-2024-555-0199 is overdue", "phone"),
        ("call +999 1234 (no such country code)", "phone"),
        ("meeting 10:30 on 2024-05-01", "phone"),
        ("DE00 3704 0044 0532 0130 00 has a bad checksum", "iban"),
        ("DE89370400440532013001 checksum off by one", "iban"),
        ("ssn 000-12-3456 and 666-12-3456 and 912-12-3456", "ssn"),
        ("ssn 123-00-4567 and 123-45-0000 and 078-05-1120", "ssn"),
        ("tracking 536904399 (no SSN context)", "ssn"),
        ("versions 1.2.3.4.5, v1.2.3.4, 1.2.3, version 10.0.0.1", "ip_address"),
        ("octets 256.1.1.1 and 01.2.3.4", "ip_address"),
        ("at 10:30:45 and MAC 00:1A:2B:3C:4D:5E", "ip_address"),
        ("order 4111111111111112 fails Luhn", "payment_card"),
        ("The account GB31 QGWG 3952 8450 3554 04 was rejected", None),  # bad IBAN; its tail passes Luhn
        ("The account IT64 8110 0203 8429 3575 5138 828 was rejected", None),
        ("Call sk-learn-Boden-pipeline from the notebook", "secret"),
        ("secret=Action.REDACT and password: {{ .Values.existingSecret }} and token=${API_TOKEN_V2}", "secret"),
        ("evens = digits[0::2]; odds = digits[1::2]", "ip_address"),
        ("luhn-valid but no brand: 1234567812345670", "payment_card"),
        ("visa length 17: 41111111111111113", "payment_card"),
        (f"not a JWT: {NOT_JWT}", "secret"),
        ("password=changeme and token=tokenizer.encode and password: hunter2", "secret"),
        ("uuid 123e4567-e89b-12d3-a456-426614174000 and sha d41d8cd98f00b204e9800998ecf8427e", None),
    ],
)
def test_near_misses_stay_quiet(scanner: Scanner, text: str, detector: str | None) -> None:
    assert found(scanner, text, detector) == []


def test_findings_carry_confidence_kind_and_version(scanner: Scanner) -> None:
    text = "key AKIAIOSFODNN7EXAMPLE and SSN 536-90-4399"
    aws, ssn = scanner.scan(text)
    assert isinstance(aws, Match) and (aws.detector.name, aws.kind) == ("secret", "aws")
    assert (ssn.detector.name, ssn.kind) == ("ssn", "ssn")
    assert 0 < ssn.confidence <= 1 and 0 < aws.confidence <= 1
    assert ssn.confidence > 0.9  # "SSN" right before it
    assert aws.detector.version and ssn.detector.version


def test_non_ascii_text_keeps_character_offsets(scanner: Scanner) -> None:
    text = "Grüße, Zoë! Kontakt: zoë@example.de, Tel. +49 30 12345678, IBAN DE89370400440532013000 — ok"
    assert found(scanner, text) == [
        ("email", "zoë@example.de"),
        ("phone", "+49 30 12345678"),
        ("iban", "DE89370400440532013000"),
    ]


def test_truncated_private_key_is_still_a_secret(scanner: Scanner) -> None:
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
    text = f"-----BEGIN PRIVATE KEY-----\n{body}\n{body}"
    assert found(scanner, text) == [("secret", text)]
