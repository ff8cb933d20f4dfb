"""The detectors on their own: what each one finds (with exact offsets) and the near-misses it must leave alone."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tollgate_dlp.detectors import DETECTORS, luhn_valid, scan


def found(text: str) -> list[tuple[str, str]]:
    """(detector, matched text) for every match: the test may look at the text, the service never returns it."""
    return [(m.detector.name, text[m.start : m.end]) for m in scan(text)]


def with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes it Luhn-valid."""
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


def luhn_broken(number: str) -> str:
    """The same number with a wrong last digit."""
    last = (int(number[-1]) + 1) % 10
    return number[:-1] + str(last)


# Test values are built from parts so that no scanner mistakes this file for a leak.
OPENAI_LEGACY = "sk-" + "T3BlbkFJ" + "a1B2c3D4e5F6g7H8i9J0" * 2
OPENAI_PROJECT = "sk-" + "proj-" + "Xy_9-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z" * 3
ANTHROPIC = "sk-" + "ant-api03-" + "Zq8_" + "Rt5Yu7Io9Pa1Sd3Fg5Hj7Kl9" * 4 + "-AA"
AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_TEMP_KEY_ID = "ASIA" + "Y3FXRZ2WQEXAMPLE"
GITHUB_PAT_CLASSIC = "ghp_" + "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2"
GITHUB_OAUTH = "gho_" + "16C7e42F292c6912E7710c838347Ae178B4a"
GITHUB_FINE_GRAINED = "github_pat_" + "11ABCDEFG0" + "abcdefghijklmnopqrstuv_" + "A1b2C3d4E5f6G7h8I9j0" * 3
SLACK_BOT = "xox" + "b-" + "1234567890-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6q"
TOLLGATE = "tg-" + "live_" + "Qm9vYmFyQmF6" * 3
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
PEM_BLOCK = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"


def test_every_detector_has_a_name_a_version_and_a_placeholder_label() -> None:
    assert set(DETECTORS) == {"email", "payment_card", "secret", "phone", "iban", "ssn", "ip_address"}
    for name, detector in DETECTORS.items():
        assert detector.name == name and detector.version and detector.label.isupper()


class TestEmail:
    DETECTOR = "email"

    @pytest.mark.parametrize(
        "address",
        [
            "alice@example.com",
            "John.Doe+invoices@mail.example.co.uk",
            "x_y%z-w@sub-domain.example.io",
            "josé@example.com",
            "1234@numbers-first.example.org",
        ],
    )
    def test_finds_the_whole_address(self, address: str) -> None:
        assert found(f"Please write to {address}, thanks.") == [("email", address)]

    def test_offsets_point_at_the_address(self) -> None:
        text = "to: bob@example.com."
        (match,) = scan(text)
        assert (match.start, match.end) == (4, 19)

    @pytest.mark.parametrize(
        "text",
        [
            "ssh user@localhost and then",
            "ping @channel about it",
            "foo@bar has no dot",
            "a@b.c has a one-letter TLD",
            "email@123.123.123.123 is an IP literal",
            "name at example dot com",
            "release 1.2.3.4 is out",
            "the @decorator on line 3",
            "user@.example.com",
        ],
    )
    def test_near_misses(self, text: str) -> None:
        assert [f for f in found(text) if f[0] == self.DETECTOR] == []


class TestPaymentCard:
    DETECTOR = "payment_card"

    @pytest.mark.parametrize(
        "card",
        [
            "4111111111111111",  # Visa test number
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555555555554444",  # Mastercard
            "378282246310005",  # Amex, 15 digits
            "3782 822463 10005",  # Amex grouping 4-6-5
            "6011111111111117",  # Discover
            "4222222222222",  # 13 digits
            with_check_digit("62" + "0" * 16),  # 19 digits
            with_check_digit("6200 0000 0000 0000 00".replace(" ", "")),
        ],
    )
    def test_finds_luhn_valid_numbers(self, card: str) -> None:
        assert found(f"my card is {card}, exp 12/29") == [("payment_card", card)]

    def test_offsets_and_non_ascii_text_before_it(self) -> None:
        text = "Grüße — Karte: 4111 1111 1111 1111!"
        (match,) = scan(text)
        assert text[match.start : match.end] == "4111 1111 1111 1111"

    @pytest.mark.parametrize(
        "text",
        [
            f"order {luhn_broken('4111111111111111')} shipped",  # Luhn failure: an order number, not a card
            f"Order #{luhn_broken(with_check_digit('100200300400'))} is ready",  # 13 digits, fails Luhn
            f"tracking {luhn_broken('4111 1111 1111 1111')}",
            "411111111111 has only twelve digits",
            f"{with_check_digit('4' * 19)} has twenty digits",
            "version 1.2.3.4 and 10.0.0.1",
            "pi is 3.4111111111111111 roughly",  # the digits of a decimal fraction
            "call +4111111111111111 now",  # an international phone number
            "md5 d41d8cd98f00b204e9800998ecf8427e",
            "sha1 4111111111111111abcdef0123456789abcdef01",  # a hex hash starting with a valid card's digits
            "mixed 4111 1111-1111 1111 separators",
            "dates 2024-01-15 and 2025-12-31",
            "uuid 123e4567-e89b-12d3-a456-426614174000",
            "x4111111111111111 glued to a word",
        ],
    )
    def test_near_misses(self, text: str) -> None:
        assert [f for f in found(text) if f[0] == self.DETECTOR] == []

    def test_luhn(self) -> None:
        assert luhn_valid("79927398713")
        assert not luhn_valid("79927398710")
        assert luhn_valid("4111111111111111")


class TestSecret:
    DETECTOR = "secret"

    @pytest.mark.parametrize(
        "secret",
        [
            OPENAI_LEGACY,
            OPENAI_PROJECT,
            ANTHROPIC,
            AWS_KEY_ID,
            AWS_TEMP_KEY_ID,
            GITHUB_PAT_CLASSIC,
            GITHUB_OAUTH,
            GITHUB_FINE_GRAINED,
            SLACK_BOT,
            GOOGLE,
            TOLLGATE,
            PEM_BLOCK,
        ],
    )
    def test_finds_the_whole_secret(self, secret: str) -> None:
        assert found(f"config:\n  key = {secret}\nthanks") == [("secret", secret)]

    def test_a_truncated_private_key_is_still_caught_with_its_body(self) -> None:
        header = "-----BEGIN OPENSSH PRIVATE KEY-----"
        text = f"here it is {header}\n{PEM_BODY}\n{PEM_BODY[:30]}\nwhat now?"
        assert found(text) == [("secret", f"{header}\n{PEM_BODY}\n{PEM_BODY[:30]}")]

    def test_offsets_of_a_key_after_a_quote(self) -> None:
        text = f'OPENAI_API_KEY="{OPENAI_LEGACY}"'
        (match,) = scan(text)
        assert (match.start, match.end) == (16, 16 + len(OPENAI_LEGACY))

    @pytest.mark.parametrize(
        "text",
        [
            "pip install scikit-learn; import sk-learn",
            "the task-force-alpha-bravo-charlie-delta met",  # "sk-" inside a word
            "sk-this-is-just-a-long-kebab-case-name",  # no digit, one case: not random
            "AKIA123 is too short",
            "AKIAIOSFODNN7EXAMPLEXYZ is too long to be a key id",
            "ghp_short",
            "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
            "uuid 123e4567-e89b-12d3-a456-426614174000",
            "tg-short",
            "xoxb-short",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----",
            "version 1.2.3.4",
            "An ordinary sentence with Apples, AKIA-like words, ASIAN food and snake_case_names.",
        ],
    )
    def test_near_misses(self, text: str) -> None:
        assert [f for f in found(text) if f[0] == self.DETECTOR] == []


def test_ordinary_prose_and_code_have_no_findings() -> None:
    text = (
        "Summarize the quarterly report: revenue grew 12.5% to $4,200,000 in Q3 2024 (see table 3.1.2).\n"
        "def retry(attempts: int = 3) -> None:\n    for i in range(attempts):\n        time.sleep(2 ** i)\n"
        "Meeting at 10:30 on 2024-05-01, room B-204; call ext. 5521. Version 1.2.3.4 fixes #1234."
    )
    assert found(text) == []


def test_several_kinds_in_one_text_in_order() -> None:
    text = f"mail a@example.com card 4111111111111111 key {AWS_KEY_ID} end"
    assert found(text) == [
        ("email", "a@example.com"),
        ("payment_card", "4111111111111111"),
        ("secret", AWS_KEY_ID),
    ]


CARDS = ["4111111111111111", "4111 1111 1111 1111", "378282246310005", "5555-5555-5555-4444"]
_NOISE = st.text(alphabet="abcdefghij klmnop,.;:()!?\n", max_size=60)


@settings(max_examples=200, deadline=None)
@given(before=_NOISE, card=st.sampled_from(CARDS), after=_NOISE)
def test_a_planted_card_is_found_exactly_wherever_it_is(before: str, card: str, after: str) -> None:
    text = f"{before} {card} {after}"
    (match,) = scan(text)
    assert match.detector.name == "payment_card"
    assert (match.start, match.end) == (len(before) + 1, len(before) + 1 + len(card))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_matches_are_ordered_in_bounds_and_never_overlap(text: str) -> None:
    last_end = 0
    for match in scan(text):
        assert last_end <= match.start < match.end <= len(text)
        last_end = match.end


@settings(max_examples=300, deadline=None)
@given(key_bytes=st.binary(min_size=32, max_size=32))
def test_every_tollgate_key_billing_issues_is_found(key_bytes: bytes) -> None:
    """Billing issues "tg-" + 43 URL-safe base64 characters (32 random bytes); its display prefix is not a key."""
    key = "tg-" + base64.urlsafe_b64encode(key_bytes).decode().rstrip("=")
    assert found(f"Authorization: Bearer {key}\n") == [("secret", key)]
    assert found(f"key {key[:12]}… created") == []
