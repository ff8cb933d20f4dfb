"""Money at the HTTP edge: integer nano-units inside, exact decimal text outside.

Amounts cross the API as decimal text rendered straight from the integer (never through a float), so
``Decimal(text) * 10**9 == nanos`` holds for every amount, and as JSON numbers where OpenAI-style clients expect
numbers (``GET /v1/key``). Amounts coming in (credits, key limits) are parsed as :class:`~decimal.Decimal` from the
JSON text itself, so ``0.1`` is exactly one tenth.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, localcontext

import orjson
from tollgate_common.money import NANOS_PER_UNIT, amounts, nanos_to_text

from .errors import InvalidRequest

__all__ = ["NANOS_PER_UNIT", "ExactNumber", "amounts", "dumps_exact", "nanos_to_text", "parse_amount"]

_MAX_NANOS = 2**63 - 1
_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


class ExactNumber(str):
    """Decimal text that :func:`dumps_exact` writes as a bare JSON number (orjson cannot write a Decimal)."""

    __slots__ = ()

    @classmethod
    def of_nanos(cls, nanos: int) -> ExactNumber:
        return cls(nanos_to_text(nanos))


def dumps_exact(value: object) -> bytes:
    """JSON like orjson.dumps, except that every :class:`ExactNumber` becomes a number written verbatim."""
    if isinstance(value, ExactNumber):
        return value.encode()
    if isinstance(value, dict):
        items = b",".join(orjson.dumps(str(k)) + b":" + dumps_exact(v) for k, v in value.items())
        return b"{" + items + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(dumps_exact(v) for v in value) + b"]"
    return orjson.dumps(value)


def parse_amount(value: object, *, param: str, allow_zero: bool = False) -> int:
    """A client's amount (a decimal string, or a JSON number parsed as Decimal) → nano-units.

    At most 9 decimals (a nano-unit is the smallest amount there is), positive (or zero when allowed), and within
    int64. Floats are refused: by the time a float exists its exact value is already lost.
    """
    if isinstance(value, bool) or value is None:
        raise InvalidRequest(f"'{param}' must be a decimal amount such as \"10.50\"", param=param)
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and _DECIMAL_TEXT.match(value.strip()):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
            raise InvalidRequest(f"'{param}' is not a decimal amount", param=param) from None
    else:
        raise InvalidRequest(f"'{param}' must be a decimal amount such as \"10.50\"", param=param)
    if not amount.is_finite():
        raise InvalidRequest(f"'{param}' must be a finite amount", param=param)
    with localcontext() as ctx:
        ctx.prec = 60  # int64 nano-units need 19 digits; never round silently
        scaled = amount.scaleb(9)
        if scaled < 0 or (scaled == 0 and not allow_zero):
            bound = "zero or more" if allow_zero else "greater than zero"
            raise InvalidRequest(f"'{param}' must be {bound}", param=param)
        if scaled > _MAX_NANOS:
            raise InvalidRequest(f"'{param}' is too large", param=param)
        if scaled != scaled.to_integral_value():
            raise InvalidRequest(f"'{param}' has more than 9 decimal places", param=param)
        return int(scaled)
