"""The DLP detectors: what counts as an email address, phone number, payment card, IBAN, US SSN, IP address and
secret, each as one regular expression plus a validator.

Every built-in is a :class:`Spec`: a ``re`` pattern (ASCII, with look-arounds for token boundaries), the
look-around-free Hyperscan *anchor* that any match of it must contain within ``reach`` characters of its start,
and a validator that confirms a candidate (checksum, ranges, entropy) and may trim its span. :mod:`.engine` runs
the specs with Hyperscan (one compiled database, one pass) or with ``re`` alone; both enumerate exactly the same
candidates and validate them with the same code, so they report identical findings.

A match is reported only as (detector, start, end, confidence, kind): the matched text is never kept, logged or
returned. Offsets are Python ``str`` indices. Findings never overlap; where two would, the one that starts first
(then the longer one, then the earlier spec) wins.

Secrets are ONE detector, ``secret`` (policy rules are per detector), with a ``kind`` per format ("aws",
"openai", "github", "pem", "jwt", "assignment", ...) for audit. Changing what a detector matches means bumping its
``version``: findings carry it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from . import validators as v

if TYPE_CHECKING:
    from .engine import Scanner

__all__ = [
    "DETECTORS",
    "EMAIL",
    "IBAN",
    "IP_ADDRESS",
    "PAYMENT_CARD",
    "PHONE",
    "SECRET",
    "SPECS",
    "SSN",
    "CustomDetector",
    "Detector",
    "Match",
    "Spec",
    "build_scanner",
    "luhn_valid",
    "scan",
]

luhn_valid = v.luhn_valid


@dataclass(frozen=True, slots=True)
class Detector:
    """A named, versioned kind of sensitive data. ``label`` names its redaction placeholder (``[LABEL_n]``)."""

    name: str
    version: str
    label: str


EMAIL: Final = Detector(name="email", version="2", label="EMAIL")
PAYMENT_CARD: Final = Detector(name="payment_card", version="2", label="PAYMENT_CARD")
SECRET: Final = Detector(name="secret", version="2", label="SECRET")
PHONE: Final = Detector(name="phone", version="1", label="PHONE")
IBAN: Final = Detector(name="iban", version="1", label="IBAN")
SSN: Final = Detector(name="ssn", version="1", label="SSN")
IP_ADDRESS: Final = Detector(name="ip_address", version="1", label="IP_ADDRESS")

#: Every built-in detector by name, in a stable order (the order GetPolicy lists rules in).
DETECTORS: Final[dict[str, Detector]] = {d.name: d for d in (EMAIL, PAYMENT_CARD, SECRET, PHONE, IBAN, SSN, IP_ADDRESS)}


class Match(NamedTuple):
    """Where one detector fired: ``text[start:end]``. Deliberately holds no copy of the text."""

    detector: Detector
    start: int
    end: int
    confidence: float = 1.0
    kind: str = ""


@dataclass(frozen=True)
class CustomDetector:
    """An account's own detector: a regular expression and/or keywords (case-insensitive, whole words)."""

    name: str
    pattern: str = ""
    keywords: tuple[str, ...] = ()
    label: str = ""


#: A validator: (text, start, end) of a candidate → (start, end, confidence) of the finding, or None.
Validator = Callable[[str, int, int], "tuple[int, int, float] | None"]


@dataclass(frozen=True, slots=True)
class Spec:
    """One pattern of one detector (see the module docstring)."""

    detector: Detector
    kind: str
    pattern: re.Pattern[str]
    anchor: str  # Hyperscan expression every match contains, ending ≤ ``reach`` characters after the match start
    reach: int
    validate: Validator
    needle: str = ""  # a literal every match contains ("" when none): the ``re`` engine skips the spec without it
    caseless: bool = False


def _accept(confidence: float) -> Validator:
    return lambda text, start, end: (start, end, confidence)


# --- validators ---------------------------------------------------------------------------------------------------


#: The start of an IBAN before a card-like run of digit groups ("GB31 QGWG 3952 8450…"): the digits are the
#: rest of that (possibly invalid) IBAN, not a card.
_IBAN_BEFORE: Final = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: [A-Z0-9]{4}){0,6} \Z")


def _card(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    candidate = text[start:end]
    if " " in candidate and "-" in candidate:
        return None
    if _IBAN_BEFORE.search(text, max(0, start - 40), start):
        return None
    digits = candidate.replace(" ", "").replace("-", "")
    return (start, end, 1.0) if v.card_brand(digits) else None


_IBAN_TAIL: Final = re.compile(r"[A-Za-z0-9]")


def _iban(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    length = v.iban_length(text[start : start + 2])
    if length is None:
        return None
    compact: list[str] = []
    stop = start
    while stop < end and len(compact) < length:  # the country's length decides where the IBAN ends
        if text[stop] != " ":
            compact.append(text[stop])
        stop += 1
    if len(compact) < length or _IBAN_TAIL.match(text, stop):
        return None
    return (start, stop, 1.0) if v.iban_valid("".join(compact)) else None


_SSN_CONTEXT: Final = re.compile(r"(?i)\b(?:ssn|social security|soc\.? ?sec)")


def _ssn(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    digits = text[start:end].replace("-", "").replace(" ", "")
    if not v.ssn_valid(digits):
        return None
    context = _SSN_CONTEXT.search(text, max(0, start - 40), start) is not None
    if len(digits) == end - start:  # nine bare digits count only next to "SSN" / "social security"
        return (start, end, 0.9) if context else None
    return (start, end, 0.99 if context else 0.85)


_VERSION_BEFORE: Final = re.compile(r"(?i)(?:version|release|ver\.?|build|v)[ :]*\Z")


def _ipv4(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    """Four octets ≤ 255, unless the text just before calls it a version ("version 1.2.3.4", "v 10.0.0.1")."""
    if not v.ipv4_valid(text[start:end]) or _VERSION_BEFORE.search(text[max(0, start - 12) : start]):
        return None
    return (start, end, 0.9)


def _ipv6(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    """A valid address; short compressed forms such as ``0::2`` (a Python slice) only as ``::1`` or with a real
    first group (``fe80::1``)."""
    while end > start and text[end - 1] == ".":
        end -= 1
    candidate = text[start:end]
    if "::" in candidate and candidate != "::1":
        groups = [g for g in candidate.split(":") if g]
        if len(groups) < 3 and len(candidate.split(":")[0]) < 3:
            return None
    return (start, end, 0.95) if v.ipv6_valid(candidate) else None


def _phone_international(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    return (start, end, 0.9) if v.phone_possible(text[start:end]) else None


def _phone_national(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    digits = sum(c.isdigit() for c in text[start:end])
    return (start, end, 0.75) if 9 <= digits <= 11 else None


def _random_body(prefix: int, confidence: float = 0.99) -> Validator:
    def check(text: str, start: int, end: int) -> tuple[int, int, float] | None:
        return (start, end, confidence) if v.looks_random(text[start + prefix : end]) else None

    return check


def _tollgate(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    if end - start == 46:  # exactly the format billing issues: "tg-" + 43 URL-safe base64 characters
        return (start, end, 1.0)
    return _random_body(3)(text, start, end)


_PEM_END: Final = re.compile(r"-----END[A-Z0-9 ]{0,40} PRIVATE KEY-----")
_PEM_LINES: Final = re.compile(r"(?:[ \t]*\r?\n[ \t]*[A-Za-z0-9+/=:,-][A-Za-z0-9+/=:, -]{15,})*")


def _pem(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    """The complete block up to END, or, if cut off, the header and the base64 lines after it (still a leak)."""
    closing = _PEM_END.search(text, end, min(len(text), end + 16384))
    if closing is not None:
        return (start, closing.end(), 1.0)
    tail = _PEM_LINES.match(text, end)
    return (start, tail.end() if tail else end, 1.0)


def _jwt(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    header = text[start : text.index(".", start)]
    return (start, end, 0.99) if v.jwt_header_valid(header) else None


_DIGIT: Final = re.compile(r"[0-9]")
_PLACEHOLDERS: Final = ("{", "<", "(", "${", "$(", "%(")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?:\(\))?")


def _assignment(text: str, start: int, end: int) -> tuple[int, int, float] | None:
    """``password=…``: the value (not the name) when it is long and random enough to be a real credential."""
    m = _ASSIGNMENT.match(text, start)
    if m is None:  # pragma: no cover - the engine only passes matches of this very pattern
        return None
    begin, value = m.start("value"), m.group("value")
    if value.startswith(_PLACEHOLDERS) or _IDENTIFIER.fullmatch(value):  # a template or code, not a value
        return None
    # lower, upper, digit, symbol present (the value is ASCII: the pattern allows nothing else)
    classes = (value.upper() != value) + (value.lower() != value) + (_DIGIT.search(value) is not None)
    classes += not value.isalnum()
    if classes < 3 or v.entropy_bits(value) < 3.0:
        return None
    return (begin, end, 0.8)


# --- the specs ----------------------------------------------------------------------------------------------------

_W = "A-Za-z0-9_"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASSIGN_NAMES = (
    r"(?:password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|"
    r"access[_-]?token|auth[_-]?token|token)"
)
_VALUE = r"[A-Za-z0-9!#$%&()*+./<>?@\[\]^_{|}~-]{8,128}"
_ASSIGNMENT_PATTERN = rf"(?<![A-Za-z0-9]){_ASSIGN_NAMES}[\"']?[ \t]{{0,3}}[:=][ \t]{{0,3}}[\"']?(?P<value>{_VALUE})"
_ASSIGNMENT: Final = re.compile(_ASSIGNMENT_PATTERN, re.ASCII | re.IGNORECASE)


def _spec(
    detector: Detector,
    kind: str,
    pattern: str,
    anchor: str,
    reach: int,
    validate: Validator,
    needle: str = "",
    caseless: bool = False,
    unicode: bool = False,
) -> Spec:
    flags = (0 if unicode else re.ASCII) | (re.IGNORECASE if caseless else 0)
    return Spec(detector, kind, re.compile(pattern, flags), anchor, reach, validate, needle, caseless)


#: The built-in specs, in priority order for ties.
SPECS: Final[tuple[Spec, ...]] = (
    _spec(SECRET, "pem", r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY-----", r"-----BEGIN", 10, _pem, "-----BEGIN"),
    _spec(
        SECRET,
        "jwt",
        rf"eyJ(?<![{_W}-]eyJ)[A-Za-z0-9_-]{{5,2048}}\.[A-Za-z0-9_-]{{5,8192}}\.[A-Za-z0-9_-]{{5,2048}}(?![{_W}-])",
        r"eyJ",
        3,
        _jwt,
        "eyJ",
    ),
    _spec(
        SECRET,
        "anthropic",
        rf"sk-ant-(?<![{_W}-]sk-ant-)[A-Za-z0-9_-]{{20,1024}}",
        r"sk-ant-",
        7,
        _random_body(7),
        "sk-ant-",
    ),
    _spec(SECRET, "openai", rf"sk-(?<![{_W}-]sk-)(?!ant-)[A-Za-z0-9_-]{{20,1024}}", r"sk-", 3, _random_body(3), "sk-"),
    _spec(SECRET, "tollgate", rf"tg-(?<![{_W}-]tg-)[A-Za-z0-9_-]{{20,1024}}", r"tg-", 3, _tollgate, "tg-"),
    _spec(
        SECRET,
        "slack",
        rf"xox(?<![{_W}-]xox)[abprs]-[A-Za-z0-9-]{{10,1024}}",
        r"xox[abprs]-",
        5,
        _random_body(5),
        "xox",
    ),
    _spec(
        SECRET,
        "github",
        rf"gh(?<![{_W}]gh)[pousr]_[A-Za-z0-9]{{36,255}}(?![{_W}])",
        r"gh[pousr]_",
        4,
        _accept(0.99),
        "gh",
    ),
    _spec(
        SECRET,
        "github",
        rf"github_pat_(?<![{_W}]github_pat_)[A-Za-z0-9_]{{22,255}}(?![{_W}])",
        r"github_pat_",
        11,
        _accept(0.99),
        "github_pat_",
    ),
    _spec(SECRET, "aws", rf"A(?<![{_W}]A)(?:KIA|SIA)[A-Z0-9]{{16}}(?![{_W}])", r"A(?:KIA|SIA)", 4, _accept(0.99), "A"),
    _spec(SECRET, "google", rf"AIza(?<![{_W}-]AIza)[A-Za-z0-9_-]{{35}}(?![{_W}-])", r"AIza", 4, _accept(0.99), "AIza"),
    _spec(SECRET, "assignment", _ASSIGNMENT_PATTERN, _ASSIGN_NAMES, 21, _assignment, caseless=True),
    _spec(
        EMAIL,
        "email",
        rf"(?<![\w.%+-])[\w%+-][\w.%+-]{{0,63}}@{_LABEL}(?:\.{_LABEL}){{0,8}}\.[A-Za-z]{{2,63}}"
        rf"(?![{_W}-])",
        r"@[A-Za-z0-9]",
        66,
        _accept(0.99),
        "@",
        unicode=True,
    ),
    _spec(
        IBAN,
        "iban",
        r"(?<![A-Za-z0-9_])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,34}",
        r"\b[A-Z]{2}[0-9]{2} ?[A-Z0-9]",
        6,
        _iban,
    ),
    _spec(
        PAYMENT_CARD,
        "card",
        r"(?<![\w.,+-])[0-9](?:[ -]?[0-9]){12,18}(?![\w]|[.,-][0-9])",
        r"\b[0-9](?:[ -]?[0-9]){12}",
        25,
        _card,
    ),
    _spec(
        SSN,
        "ssn",
        r"(?<![\w.+-])[0-9]{3}([- ])[0-9]{2}\1[0-9]{4}(?![\w]|[.-][0-9])",
        r"\b[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}",
        11,
        _ssn,
    ),
    _spec(SSN, "ssn", r"(?<![\w.+-])[0-9]{9}(?![\w]|[.-][0-9])", r"\b[0-9]{9}", 9, _ssn),
    _spec(
        PHONE,
        "international",
        r"(?<![\w+])\+[1-9][0-9]{0,2}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6}(?![\w])",
        r"\+[1-9]",
        2,
        _phone_international,
        "+",
    ),
    _spec(
        PHONE,
        "national",
        r"(?<![\w+.-])(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}(?![\w]|[.-][0-9])",
        r"\b[0-9]{3}[ .-][0-9]{4}",
        14,
        _phone_national,
    ),
    _spec(
        PHONE,
        "national",
        r"(?<![\w+.-])0[1-9][0-9]{0,3}(?:[ -][0-9]{2,4}){2,4}(?![\w]|[.-][0-9])",
        r"\b0[1-9][0-9]{0,3}[ -][0-9]{2}",
        8,
        _phone_national,
    ),
    _spec(
        IP_ADDRESS,
        "ipv4",
        r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![\w]|\.[0-9])",
        r"\b[0-9]{1,3}\.[0-9]{1,3}\.",
        8,
        _ipv4,
        ".",
    ),
    _spec(
        IP_ADDRESS,
        "ipv6",
        r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{2,41}(?![\w:])",
        r"::|(?:[0-9A-Fa-f]{1,4}:){6}",  # every valid address has "::" or 8 groups (6 + an IPv4 tail)
        48,
        _ipv6,
        ":",
    ),
)


def build_scanner(custom: Sequence[CustomDetector] = (), engine: str = "auto") -> Scanner:
    """A scanner for the built-ins plus ``custom`` (see :func:`tollgate_dlp.engine.build_scanner`)."""
    from .engine import build_scanner as build

    return build(custom, engine)


_default: Scanner | None = None


def scan(text: str) -> list[Match]:
    """Every built-in finding in ``text``, in order, never overlapping (the default scanner, built once)."""
    global _default
    if _default is None:
        _default = build_scanner()
    return _default.scan(text)
