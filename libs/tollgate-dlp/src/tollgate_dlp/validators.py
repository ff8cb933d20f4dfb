"""Checksums and format rules that turn a regex candidate into a finding: Luhn and IIN ranges, IBAN mod-97, SSN
ranges, IP addresses, phone numbers, JWT headers and "looks random". Pure functions over strings; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
from collections import Counter
from typing import Final

import phonenumbers

__all__ = [
    "card_brand",
    "entropy_bits",
    "iban_length",
    "iban_valid",
    "ipv4_valid",
    "ipv6_valid",
    "jwt_header_valid",
    "looks_random",
    "luhn_valid",
    "phone_possible",
    "ssn_valid",
]

#: Luhn doubles every second digit from the right and adds the result's digits: 5 → 10 → 1, 9 → 18 → 9.
_DOUBLED: Final = str.maketrans("0123456789", "0246813579")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum every payment card number carries; ``digits`` holds only 0-9."""
    backwards = digits[::-1]
    total = sum(map(int, backwards[0::2])) + sum(map(int, backwards[1::2].translate(_DOUBLED)))
    return total % 10 == 0


# (brand, IIN prefix ranges as (low, high) over the first len(low) digits, allowed lengths).
_BRANDS: Final[tuple[tuple[str, tuple[tuple[str, str], ...], frozenset[int]], ...]] = (
    ("amex", (("34", "34"), ("37", "37")), frozenset({15})),
    ("visa", (("4", "4"),), frozenset({13, 16, 19})),
    ("mastercard", (("51", "55"), ("2221", "2720")), frozenset({16})),
    ("discover", (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")), frozenset(range(16, 20))),
    ("jcb", (("3528", "3589"),), frozenset(range(16, 20))),
    ("diners", (("300", "305"), ("36", "36"), ("38", "39")), frozenset(range(14, 20))),
    ("unionpay", (("62", "62"), ("81", "81")), frozenset(range(16, 20))),
    (
        "maestro",
        (("50", "50"), ("56", "58"), ("6304", "6304"), ("6759", "6759"), ("676770", "676774")),
        frozenset(range(12, 20)),
    ),
)


def card_brand(digits: str) -> str | None:
    """The brand whose IIN range and length fit ``digits`` and whose Luhn checksum holds, else None."""
    if not luhn_valid(digits):
        return None
    for brand, ranges, lengths in _BRANDS:
        if len(digits) not in lengths:
            continue
        for low, high in ranges:
            if low <= digits[: len(low)] <= high:
                return brand
    return None


#: IBAN length per country (ISO 13616 registry).
_IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24,
    "XK": 20,
}  # fmt: skip


def iban_length(country: str) -> int | None:
    """How many characters an IBAN of ``country`` has, or None for a country without IBANs."""
    return _IBAN_LENGTHS.get(country)


def iban_valid(compact: str) -> bool:
    """``compact`` (no spaces, upper case) has its country's length and passes the ISO 7064 mod-97 check."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


#: Numbers the SSA has publicly voided (used in advertising or by mistake).
_VOID_SSNS: Final = frozenset({"078051120", "219099999", "123456789"})


def ssn_valid(digits: str) -> bool:
    """Nine digits that the SSA could have issued: not area 000, 666 or 9xx, group 00, serial 0000, or voided."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return digits not in _VOID_SSNS


def ipv4_valid(candidate: str) -> bool:
    """Four decimal octets, each ≤ 255, without leading zeros (``010`` is octal in some parsers: not an address)."""
    parts = candidate.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 and (p == "0" or p[0] != "0") for p in parts)


def ipv6_valid(candidate: str) -> bool:
    """An IPv6 address per :mod:`ipaddress`, with at least one non-zero group (``::`` alone is not interesting)."""
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return int(address) != 0


def phone_possible(candidate: str) -> bool:
    """An international number whose country code exists and whose length is possible there (libphonenumber).

    Built directly from the digits (ITU country codes are prefix-free), which is ~10x cheaper than
    ``phonenumbers.parse``; a ``(0)`` trunk prefix written inside is dropped as libphonenumber does.
    """
    digits = "".join(c for c in candidate.replace("(0)", "") if c.isdigit())
    if not 8 <= len(digits) <= 15:
        return False
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[size:]
            number = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
            zeros = len(national) - len(national.lstrip("0"))
            if zeros:
                number.italian_leading_zero = True
                number.number_of_leading_zeros = zeros
            return bool(phonenumbers.is_possible_number(number))
    return False


def jwt_header_valid(header: str) -> bool:
    """The first part of a JWT: base64url of a JSON object naming its ``alg``."""
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        decoded = json.loads(raw)
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def entropy_bits(value: str) -> float:
    """Shannon entropy per character of ``value``."""
    counts = Counter(value)
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def looks_random(body: str) -> bool:
    """A digit, or both letter cases in one unbroken run: true of real keys, false of kebab-case words
    (``sk-learn-Some-pipeline``)."""
    if any(c.isdigit() for c in body):
        return True
    return "-" not in body and any(c.isupper() for c in body) and any(c.islower() for c in body)
