"""Money as text: integer nano-units inside every service, exact decimal text wherever a person or a JSON reader
sees it (the admin API, statements, webhook bodies). Rendered straight from the integer, never through a float, so
``Decimal(text) * 10**9 == nanos`` holds for every amount."""

from __future__ import annotations

__all__ = ["NANOS_PER_UNIT", "amounts", "nanos_to_text"]

NANOS_PER_UNIT = 10**9


def nanos_to_text(nanos: int) -> str:
    """``1_500_000_000`` → ``"1.5"``, ``10 * 10**9`` → ``"10"``, ``1`` → ``"0.000000001"``, ``-5`` → ``"-0.000000005"``.

    The shortest exact form: trailing zeros dropped, no exponent, so it is valid JSON number text as well.
    """
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_UNIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")


def amounts(**nanos: int) -> dict[str, str | int]:
    """Each amount twice, the API's convention: ``name`` as exact decimal text and ``name_nanos`` as the integer."""
    out: dict[str, str | int] = {}
    for name, value in nanos.items():
        out[name] = nanos_to_text(value)
        out[f"{name}_nanos"] = value
    return out
