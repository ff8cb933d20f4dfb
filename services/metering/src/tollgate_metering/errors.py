"""Metering's one exception hierarchy. Transport layers map it once (``grpc_server.STATUSES``); the CLI maps it to
exit statuses.

    MeteringError
    ├── InvalidRequest        a caller sent something unusable         → INVALID_ARGUMENT
    ├── PriceBookError        the price book cannot be used            → FAILED_PRECONDITION
    │   ├── InvalidPriceBook      the file/data does not validate (start-up: exit 2)
    │   └── PriceBookConflict     a version already names different content (start-up: exit 2)
    └── InvalidUsage          a usage event that cannot be rated (archived, not rated, logged)
"""

from __future__ import annotations

__all__ = [
    "InvalidPriceBook",
    "InvalidRequest",
    "InvalidUsage",
    "MeteringError",
    "PriceBookConflict",
    "PriceBookError",
]


class MeteringError(Exception):
    """Base of every error metering raises on purpose. ``reason`` is the stable ``tollgate-reason`` code."""

    reason = "metering_error"


class InvalidRequest(MeteringError):
    reason = "invalid_argument"


class PriceBookError(MeteringError):
    reason = "price_book_unavailable"


class InvalidPriceBook(PriceBookError):
    """Carries every validation problem, so an operator fixes the file in one go."""

    reason = "invalid_price_book"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class PriceBookConflict(PriceBookError):
    reason = "price_book_conflict"


class InvalidUsage(MeteringError):
    reason = "invalid_usage"
