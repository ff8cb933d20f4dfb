"""A labelled DLP corpus, generated offline and deterministically: same seed → same sentences, same labels.

Sentences come from templates filled with Faker values (names, companies, words) and with sensitive values made
here so that they are valid by construction (Luhn, IBAN mod-97, SSN ranges, possible phone lengths). Each label is
``(detector, start, end, kind)``; ``kind`` tells secret formats apart. About half the sentences carry no sensitive
data, and many of those carry a *near-miss*: an order number failing Luhn, a version string, a git hash, a UUID, a
timestamp, a phone-like invoice number, a base64 blob, an IBAN with a bad checksum, a 9-digit number that is no SSN.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import phonenumbers
from faker import Faker

_START = datetime(1980, 1, 1)
_END = datetime(2030, 1, 1)

__all__ = ["Label", "Sample", "generate"]

SEED = 20261130


@dataclass(frozen=True, slots=True)
class Label:
    detector: str
    start: int
    end: int
    kind: str


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    labels: tuple[Label, ...]


# --- sensitive values, valid by construction -------------------------------------------------------------------


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        candidate = body + check
        digits = candidate[::-1]
        total = sum(int(d) for d in digits[0::2]) + sum(sum(divmod(2 * int(d), 10)) for d in digits[1::2])
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


_CARD_PREFIXES = (
    ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15), ("37", 15),
    ("6011", 16), ("65", 16), ("3530", 16), ("3589", 19), ("36", 14), ("300", 14), ("62", 16), ("6304", 16),
    ("6759", 18),
)  # fmt: skip


def card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    number = _luhn_complete(rng, prefix, length)
    style = rng.random()
    if style < 0.4:
        return number
    sep = " " if style < 0.75 else "-"
    if length == 15:
        return sep.join((number[:4], number[4:10], number[10:]))
    return sep.join(number[i : i + 4] for i in range(0, length, 4))


def broken_card(rng: random.Random) -> str:
    number = card(rng).replace(" ", "").replace("-", "")
    return number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)


_IBAN = {"DE": 22, "GB": 22, "FR": 27, "NL": 18, "ES": 24, "IT": 27, "CH": 21, "BE": 16, "AT": 20, "PL": 28}


def _iban_check(country: str, bban: str) -> str:
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{98 - number % 97:02d}"


def iban(rng: random.Random, *, valid: bool = True) -> str:
    country = rng.choice(sorted(_IBAN))
    bban_len = _IBAN[country] - 4
    letters = 4 if country in ("GB", "NL") else 0
    bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(letters))
    bban += "".join(rng.choice(string.digits) for _ in range(bban_len - letters))
    check = _iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 96)) % 97:02d}"
    compact = country + check + bban
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ssn(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "AU", "ES", "IT", "NL", "CA")


def phone(rng: random.Random) -> str:
    region = rng.choice(_PHONE_REGIONS)
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None
    national = str(example.national_number)
    tail = "".join(rng.choice(string.digits) for _ in range(3))
    example.national_number = int(national[:-3] + tail)
    style = rng.random()
    if region in ("US", "CA") and style < 0.4:
        n = str(example.national_number)
        return rng.choice((f"({n[:3]}) {n[3:6]}-{n[6:]}", f"{n[:3]}-{n[3:6]}-{n[6:]}", f"{n[:3]}.{n[3:6]}.{n[6:]}"))
    if style < 0.7:
        return phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)


def _token(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "-_"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def secret(rng: random.Random) -> tuple[str, str]:
    """(kind, value)."""
    kind = rng.choice(("aws", "openai", "anthropic", "google", "github", "slack", "jwt", "pem", "tollgate"))
    upper = string.ascii_uppercase + string.digits
    if kind == "aws":
        return kind, rng.choice(("AKIA", "ASIA")) + _token(rng, upper, 16)
    if kind == "openai":
        return kind, "sk-" + rng.choice(("proj-", "")) + _token(rng, _URLSAFE, 48)
    if kind == "anthropic":
        return kind, "sk-ant-api03-" + _token(rng, _URLSAFE, 93)
    if kind == "google":
        return kind, "AIza" + _token(rng, _URLSAFE, 35)
    if kind == "github":
        if rng.random() < 0.8:
            return kind, "gh" + rng.choice("pousr") + "_" + _token(rng, _ALNUM, 36)
        return kind, "github_pat_" + _token(rng, _ALNUM, 22) + "_" + _token(rng, _ALNUM, 59)
    if kind == "slack":
        body = f"{rng.randint(10**9, 10**10)}-{rng.randint(10**12, 10**13)}-{_token(rng, _ALNUM, 24)}"
        return kind, "xox" + rng.choice("abprs") + "-" + body
    if kind == "jwt":
        header = _b64url(json.dumps({"alg": rng.choice(("HS256", "RS256")), "typ": "JWT"}).encode())
        payload = _b64url(
            json.dumps({"sub": str(rng.randint(1, 10**9)), "iat": rng.randint(10**9, 2 * 10**9)}).encode()
        )
        return kind, f"{header}.{payload}.{_b64url(rng.randbytes(32))}"
    if kind == "pem":
        lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(rng.randint(2, 5))]
        algo = rng.choice(("RSA ", "EC ", "", "OPENSSH "))
        return kind, f"-----BEGIN {algo}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {algo}PRIVATE KEY-----"
    return kind, "tg-" + _token(rng, _URLSAFE, 43)


def password(rng: random.Random) -> str:
    symbols = "!#$%&*+?@^~"
    chars = [
        rng.choice(string.ascii_lowercase),
        rng.choice(string.ascii_uppercase),
        rng.choice(string.digits),
        rng.choice(symbols),
    ] + [rng.choice(_ALNUM + symbols) for _ in range(rng.randint(8, 20))]
    rng.shuffle(chars)
    return "".join(chars)


# --- near-misses: look sensitive, are not -----------------------------------------------------------------------


def near_miss(rng: random.Random, fake: Faker) -> str:
    hexdigits = "0123456789abcdef"
    r = rng.randint
    choices: list[Callable[[], str]] = [
        lambda: f"Order #{broken_card(rng)} ships tomorrow.",
        lambda: f"Upgrade to v{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} before Friday.",
        lambda: f"Build {r(1, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 99)}.{r(0, 9)} failed.",
        lambda: f"See version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 99)} notes.",
        lambda: f"Fixed in commit {_token(rng, hexdigits, 40)}.",
        lambda: f"Cherry-pick {_token(rng, hexdigits, 7)} onto main.",
        lambda: f"Request id {fake.uuid4()} timed out.",
        # Fixed bounds: Faker's default range ends at "now", which would make the corpus depend on the clock.
        lambda: (
            f"Logged at {fake.date_time_between(_START, _END).isoformat()}"
            f" and again at {r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}."
        ),
        lambda: f"Invoice INV-{rng.randint(2019, 2026)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)} is overdue.",
        lambda: f"Attachment: {base64.b64encode(rng.randbytes(rng.randint(24, 60))).decode()}",
        lambda: f"The account {iban(rng, valid=False)} was rejected.",
        lambda: f"Tracking number {rng.randint(10**8, 10**9 - 1)} for {fake.company()}.",
        lambda: f"Part no. {r(100, 999)}-{r(10, 99)}-{r(100, 999)}-{r(1, 9)} in stock.",
        lambda: f"Revenue grew {r(1, 40)}.{r(0, 9)}% to ${r(1, 900)},{r(100, 999)},000.",
        lambda: "Use the token= field, e.g. token=example for tests.",
        lambda: f"Set password: {fake.word()} in the staging config.",
        lambda: f"Zip {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}, {fake.city()}.",
        lambda: f"Ticket {fake.word().upper()}-{rng.randint(1000, 99999)} is assigned to {fake.first_name()}.",
        lambda: f"Ratio {rng.random():.15f} is close enough.",
        lambda: f"Call sk-learn-{fake.word()}-pipeline from the notebook.",
    ]
    return rng.choice(choices)()


# --- sentences ---------------------------------------------------------------------------------------------------

_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("Please send the contract to {email} by Monday.", "email"),
    ("Contact {name} at {email} or {phone}.", "email", "phone"),
    ("Customer {name} paid with card {card} yesterday.", "payment_card"),
    ("My card number is {card}, expiry 09/27.", "payment_card"),
    ("Wire the refund to IBAN {iban} please.", "iban"),
    ("Beneficiary: {name}, account {iban}.", "iban"),
    ("Employee SSN: {ssn}", "ssn"),
    ("{name}'s social security number is {ssn}.", "ssn"),
    ("The server at {ipv4} keeps refusing connections.", "ip_address"),
    ("Whitelist {ipv6} in the firewall.", "ip_address"),
    ("Call me on {phone} after 5pm.", "phone"),
    ("Why does boto fail with key {secret}?", "secret"),
    ('config.yaml has api_key: "{secret}" in it', "secret"),
    ("export TOKEN={secret}", "secret"),
    ("Here is the key file:\n{secret}\nwhat format is it?", "secret"),
    ("db settings: password={password} host=db.internal", "password"),
    ("Log line: user={email} ip={ipv4} status=403", "email", "ip_address"),
    ("Patient {name}, phone {phone}, SSN {ssn}.", "phone", "ssn"),
    ("From: {name} <{email}>", "email"),
    ("curl http://{ipv4}:8080/health returned 502", "ip_address"),
    ("listen on [{ipv6}]:443", "ip_address"),
    ("(card: {card}) was declined", "payment_card"),
    ("IBAN:{iban};BIC:DEUTDEFF", "iban"),
    ("{ssn} is the SSN on file for {name}", "ssn"),
    ("ring {phone}!", "phone"),
    ('{{"user": "{email}", "ip": "{ipv4}", "card": "{card}"}}', "email", "ip_address", "payment_card"),
    ("AWS_SECRET_ACCESS_KEY and {secret} leaked in the CI log", "secret"),
)


def generate(n: int = 2400, seed: int = SEED) -> list[Sample]:
    """``n`` samples; about half with sensitive data, the rest prose and near-misses. Deterministic in ``seed``."""
    rng = random.Random(seed)
    fake = Faker(["en_US", "en_GB", "de_DE", "fr_FR"])
    fake.seed_instance(seed)
    return [_sample(rng, fake) for _ in range(n)]


def _sample(rng: random.Random, fake: Faker) -> Sample:
    roll = rng.random()
    if roll < 0.5:
        return _sensitive(rng, fake)
    if roll < 0.8:
        return Sample(near_miss(rng, fake), ())
    return Sample(fake.sentence(nb_words=rng.randint(6, 16)), ())


def _sensitive(rng: random.Random, fake: Faker) -> Sample:
    template, *_ = rng.choice(_TEMPLATES)
    text, labels = "", []
    for literal, field in _fields(template):
        text += literal
        if field is None:
            continue
        detector, kind, value = _value(field, rng, fake)
        if detector:
            labels.append(Label(detector, len(text), len(text) + len(value), kind))
        text += value
    return Sample(text, tuple(labels))


def _fields(template: str) -> Iterator[tuple[str, str | None]]:
    for part in string.Formatter().parse(template):
        yield part[0], part[1]


def _value(field: str, rng: random.Random, fake: Faker) -> tuple[str, str, str]:
    """(detector or "", kind, value) for one template field."""
    if field == "name":
        return "", "", fake.name()
    if field == "email":
        return "email", "email", rng.choice((fake.email, fake.company_email, fake.free_email))()
    if field == "phone":
        return "phone", "phone", phone(rng)
    if field == "card":
        return "payment_card", "card", card(rng)
    if field == "iban":
        return "iban", "iban", iban(rng)
    if field == "ssn":
        return "ssn", "ssn", ssn(rng)
    if field == "ipv4":
        return "ip_address", "ipv4", rng.choice((fake.ipv4_public, fake.ipv4_private))()
    if field == "ipv6":
        return "ip_address", "ipv6", fake.ipv6()
    if field == "password":
        return "secret", "assignment", password(rng)
    kind, value = secret(rng)
    return "secret", kind, value
