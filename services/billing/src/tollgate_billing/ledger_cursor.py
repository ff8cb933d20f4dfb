"""The ledger listing's page token: an opaque cursor naming the last posting of the previous page.

Keyset, not offset: the ledger grows at its newest end while someone pages towards its oldest, so an offset would
shift by every entry written meanwhile (an entry seen twice, or skipped); "older than posting N" never moves.
"""

from __future__ import annotations

import base64
import binascii

from .errors import InvalidArgument

__all__ = ["ledger_cursor", "ledger_page_token"]

_PREFIX = "ledger:v1:"


def ledger_page_token(posting_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{posting_id}".encode()).decode().rstrip("=")


def ledger_cursor(token: str) -> int | None:
    """The posting id a token points before; None for the first page. A token this API did not hand out is an
    :class:`InvalidArgument` (reason ``invalid_page_token``)."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text.removeprefix(_PREFIX)
    if not text.startswith(_PREFIX) or not number.isascii() or not number.isdigit() or len(number) > 19:
        raise InvalidArgument("page_token is not a token this API returned")
    return int(number)
