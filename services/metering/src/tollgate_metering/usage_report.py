"""Usage analytics: rated usage summed by the groups a caller asks for, a page at a time (pure; no I/O).

The input is ``rated_usage`` rows of one account in a time window (the read model rebuilt from the usage log), so
the report of a rebuilt database equals the live one. Groups are computed here rather than in SQL because a tag
is a key of a JSON object and one request can carry several: SQLite and PostgreSQL would each need their own JSON
functions. The cost is one pass over the window's rows per page (see the README's known gaps).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .domain import utc_day
from .errors import InvalidRequest

__all__ = ["DIMENSIONS", "MAX_PAGE_SIZE", "ReportRow", "UsageFact", "parse_group_by", "report_page"]

#: The plain dimensions; ``tag`` and ``tag:<name>`` come on top.
DIMENSIONS = ("day", "model", "key", "team", "project")
MAX_PAGE_SIZE = 10_000
DEFAULT_PAGE_SIZE = 100
_MAX_TAG_NAME = 64


class UsageFact(NamedTuple):
    """What one rated request contributes (a projection of its ``rated_usage`` row)."""

    occurred_at_unix_ms: int
    model: str
    key_id: str
    team: str
    project: str
    tags: str  # the row's JSON object
    currency: str
    prompt_tokens: int
    cached_prompt_tokens: int
    cache_write_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    upstream_cost_nanos: int
    resale_price_nanos: int


class ReportRow(NamedTuple):
    day: str
    model: str
    key_id: str
    team: str
    project: str
    tag: str
    currency: str
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    cache_write_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    upstream_cost_nanos: int
    resale_price_nanos: int

    @property
    def margin_nanos(self) -> int:
        return self.resale_price_nanos - self.upstream_cost_nanos


def parse_group_by(values: Iterable[str]) -> tuple[tuple[str, ...], str | None]:
    """The plain dimensions asked (in ``DIMENSIONS`` order) and the tag grouping: None, ``"*"`` (every tag) or a
    tag name. Unknown or repeated values are an :class:`InvalidRequest` naming them."""
    plain: set[str] = set()
    tag: str | None = None
    for raw in values:
        value = raw.strip()
        if value in DIMENSIONS and value not in plain:
            plain.add(value)
        elif value in ("tag", "tags") and tag is None:
            tag = "*"
        elif value.startswith("tag:") and tag is None and 0 < len(value) - 4 <= _MAX_TAG_NAME:
            tag = value[4:]
        else:
            raise InvalidRequest(
                f"group_by {value!r} is not one of {', '.join(DIMENSIONS)}, tag, tag:<name> (each at most once, "
                "one tag grouping)"
            )
    return tuple(d for d in DIMENSIONS if d in plain), tag


def _tags_of(fact: UsageFact, tag: str) -> list[str]:
    tags = json.loads(fact.tags) if fact.tags and fact.tags != "{}" else {}
    if tag == "*":
        return [f"{k}={v}" for k, v in sorted(tags.items())] or [""]
    return [str(tags.get(tag, ""))]


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{offset}".encode()).decode().rstrip("=")


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, number = text.partition(":")
        offset = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("page_token is not a token this API returned") from None
    if version != "v1" or offset < 0:
        raise InvalidRequest("page_token is not a token this API returned")
    return offset


def report_page(
    facts: Iterable[UsageFact], group_by: Sequence[str], page_size: int, page_token: str
) -> tuple[list[ReportRow], str]:
    """One page of the report, sorted by the group's values, and the next page's token ("" on the last page).

    A token is the offset into that sorted list: a page asked again after new usage arrived may shift, which is
    what a live report does (OpenRouter's and Stripe's usage listings behave alike); a closed window never shifts.
    """
    size = page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be in [1, {MAX_PAGE_SIZE}]")
    offset = _offset(page_token)
    plain, tag = parse_group_by(group_by)
    sums: dict[tuple[str, ...], list[int]] = {}
    for f in facts:
        base = (
            utc_day(f.occurred_at_unix_ms) if "day" in plain else "",
            f.model if "model" in plain else "",
            f.key_id if "key" in plain else "",
            f.team if "team" in plain else "",
            f.project if "project" in plain else "",
        )
        for tag_value in _tags_of(f, tag) if tag is not None else [""]:
            key = (*base, tag_value, f.currency)
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = [0] * 8
            acc[0] += 1
            acc[1] += f.prompt_tokens
            acc[2] += f.cached_prompt_tokens
            acc[3] += f.cache_write_tokens
            acc[4] += f.completion_tokens
            acc[5] += f.reasoning_tokens
            acc[6] += f.upstream_cost_nanos
            acc[7] += f.resale_price_nanos
    keys = sorted(sums)
    page = [ReportRow._make((*key, *sums[key])) for key in keys[offset : offset + size]]
    more = offset + size < len(keys)
    return page, _token(offset + size) if more else ""
