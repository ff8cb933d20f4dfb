"""What an incoming event must satisfy before metering stores it: every value fits the column it goes into.

An event that does not fit would fail its batch's statements (on PostgreSQL a string longer than its VARCHAR, an
integer beyond BIGINT) or be stored wrong (a negative token count, silently, on SQLite). So each event is checked
first, and one of three things happens to it:

- it fits: stored as it came;
- a *descriptive* string is too long (:data:`SHORTENED_FIELDS`: the upstream's request id, the upstream model, the
  provider, team, project): it is rated and billed with that string shortened by :func:`shorten` (a prefix plus a
  hash of the whole, so distinct values stay distinct), and the rated row and ``UsageRated`` say so in the tag
  :data:`TRUNCATED_TAG` (the fields shortened, comma-separated). The archive keeps the original payload byte for
  byte, so nothing is lost. These strings come from upstream providers; refusing the event would leave a served
  request unrated for a cosmetic field;
- anything else is *refused* with a reason (:func:`usage_problem`): an identity that does not fit
  (request id, account, key, hold, model — billing could not match a shortened one to its hold or key, and two
  shortened ids could collide), a negative count, a time outside year 0–9999, an amount beyond 64 bits. The live
  consumer parks a refused event (``parked_events``, ``tollgate_consumer_parked_events_total``) and the partition
  goes on. It is not billed at a made-up price: no ``UsageRated`` is published, so billing's hold for the request
  expires and is captured in full and flagged for reconciliation — the customer pays at most the hold, never
  nothing, and an operator sees the parked row.
"""

from __future__ import annotations

import hashlib

from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope

from .tables import archive, rated_usage

__all__ = [
    "ARCHIVE_ACCOUNT_LENGTH",
    "MAX_UNIX_MS",
    "SHORTENED_FIELDS",
    "TRUNCATED_TAG",
    "envelope_problem",
    "shorten",
    "shorten_fields",
    "usage_problem",
]

#: 9999-12-31T23:59:59.999Z: the last instant a calendar day (the aggregates' bucket) can be written for.
MAX_UNIX_MS = 253_402_300_799_999
#: The tag that names the fields :func:`shorten_fields` shortened.
TRUNCATED_TAG = "tollgate.truncated"
#: Descriptive strings shortened to fit rather than refused (see the module docstring).
SHORTENED_FIELDS = ("provider", "upstream_model", "upstream_request_id", "team", "project")
#: Identities: refused when they do not fit.
_IDENTITY_FIELDS = ("request_id", "account_id", "key_id", "hold_id", "model")
_TOKEN_FIELDS = (
    "prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens", "reasoning_tokens",
    "cache_write_tokens",
)
_HASH_HEX = 16


def _length(column: object) -> int:
    length = getattr(getattr(column, "type", None), "length", None)
    assert isinstance(length, int)
    return length


_LIMITS = {name: _length(rated_usage.c[name]) for name in (*_IDENTITY_FIELDS, *SHORTENED_FIELDS)}
#: The archive's account column: an event whose account id is longer is archived under its ``ce_subject``.
ARCHIVE_ACCOUNT_LENGTH = _length(archive.c.account_id)
_ENVELOPE_LIMITS = (("id", _length(archive.c.event_id)), ("source", _length(archive.c.source)),
                    ("type", _length(archive.c.event_type)), ("subject", _length(archive.c.subject)),
                    ("time", _length(archive.c.event_time)))


def envelope_problem(env: Envelope) -> str | None:
    """Why ``env``'s CloudEvent attributes cannot be archived and deduplicated (too long), or None."""
    for attribute, limit in _ENVELOPE_LIMITS:
        value: str = getattr(env, attribute)
        if len(value) > limit:
            return f"ce_{attribute} is {len(value)} characters, more than {limit}"
    return None


def usage_problem(msg: usage_pb2.UsageRecorded) -> str | None:
    """Why ``msg`` must be refused (see the module docstring), or None. Names fields, never their values."""
    for name in _IDENTITY_FIELDS:
        value: str = getattr(msg, name)
        if not value and name in ("request_id", "account_id"):
            return f"{name} is empty"
        if len(value) > _LIMITS[name]:
            return f"{name} is {len(value)} characters, more than {_LIMITS[name]}"
    usage = msg.usage
    for name in _TOKEN_FIELDS:
        if getattr(usage, name) < 0:
            return f"usage.{name} is negative"
    if not 0 <= msg.occurred_at_unix_ms <= MAX_UNIX_MS:
        return f"occurred_at_unix_ms is outside [0, {MAX_UNIX_MS}]"
    return None


def shorten(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters: a prefix, ``~`` and the first 16 hex digits of its SHA-256."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_HASH_HEX]
    return f"{value[: limit - _HASH_HEX - 1]}~{digest}"


def shorten_fields(msg: usage_pb2.UsageRecorded) -> list[str]:
    """Shorten, in ``msg``, the descriptive fields too long for their columns; returns their names (may be empty)."""
    shortened = []
    for name in SHORTENED_FIELDS:
        value: str = getattr(msg, name)
        if len(value) > _LIMITS[name]:
            setattr(msg, name, shorten(value, _LIMITS[name]))
            shortened.append(name)
    if shortened:
        msg.tags[TRUNCATED_TAG] = ",".join(shortened)
    return shortened
