"""Metering's tables (its own database; on PostgreSQL its own schema). Nobody else reads them.

Every change here comes with an Alembic revision in ``migrations/versions``
(``python -m tollgate_common.migrations revision tollgate_metering "what changed"``); a test fails on drift.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from tollgate_common.db import messaging_tables

__all__ = [
    "aggregates",
    "archive",
    "archive_heads",
    "attempt_usage",
    "messaging",
    "metadata",
    "price_books",
    "rated_usage",
]

metadata = MetaData()
messaging = messaging_tables(metadata, consumer=True)

#: One row per price-book version; ``content`` is the canonical JSON the version names, forever.
price_books = Table(
    "price_books",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # load order: later wins on equal effective_from
    Column("version", String(100), nullable=False, unique=True),
    Column("content_sha256", String(64), nullable=False),
    Column("content", Text, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("markup_bps", Integer, nullable=False),
    Column("effective_from_unix_ms", BigInteger, nullable=False),
    Column("loaded_at_unix_ms", BigInteger, nullable=False),
)

#: One row per rated request: every input to the amounts and both amounts, so any row can be re-derived.
rated_usage = Table(
    "rated_usage",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("event_source", String(200), nullable=False),
    Column("account_id", String(200), nullable=False, index=True),
    Column("key_id", String(200), nullable=False),
    Column("hold_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(200), nullable=False),
    Column("upstream_model", String(200), nullable=False),
    Column("upstream_request_id", String(200), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("cached_prompt_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("team", String(200), nullable=False),
    Column("project", String(200), nullable=False),
    Column("tags", Text, nullable=False),  # JSON object, keys sorted
    Column("occurred_at_unix_ms", BigInteger, nullable=False),
    Column("rated_at_unix_ms", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("exchange_rate", String(50), nullable=False),
    Column("price_book_version", String(100), nullable=False),
    Column("markup_bps", Integer, nullable=False),
    Column("input_price_nanos", BigInteger, nullable=False),
    Column("output_price_nanos", BigInteger, nullable=False),
    Column("upstream_cost_nanos", BigInteger, nullable=False),
    Column("resale_price_nanos", BigInteger, nullable=False),
    Column("priced", Boolean, nullable=False),
    # Prompt-cache writes (part of prompt_tokens) and the cache/reasoning prices applied (0 on rows rated before
    # they existed, whose amounts used the input and output prices only).
    Column("cache_write_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cached_input_price_nanos", BigInteger, nullable=False, server_default="0"),
    Column("cache_write_price_nanos", BigInteger, nullable=False, server_default="0"),
    Column("reasoning_price_nanos", BigInteger, nullable=False, server_default="0"),
    # Usage reports read one account's rows in a time window.
    Index("ix_rated_usage_account_time", "account_id", "occurred_at_unix_ms"),
)

#: Sums per account, key, model, UTC day, team, project and currency: what summaries and dashboards read.
aggregates = Table(
    "usage_aggregates",
    metadata,
    Column("account_id", String(200), nullable=False),
    Column("key_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("day", String(10), nullable=False),  # YYYY-MM-DD, UTC
    Column("team", String(200), nullable=False),
    Column("project", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_prompt_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("upstream_cost_nanos", BigInteger, nullable=False),
    Column("resale_price_nanos", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("account_id", "key_id", "model", "day", "team", "project", "currency"),
)

#: The hash-chained archive of every consumed event, per account. Durable where the embedded broker is not.
archive = Table(
    "event_archive",
    metadata,
    Column("account_id", String(200), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("source", String(200), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("event_time", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("archived_at_unix_ms", BigInteger, nullable=False),  # not hashed: when we stored it, not what happened
    PrimaryKeyConstraint("account_id", "seq"),
)

#: The last (seq, hash) per account: the append point, and the anchor that reveals events cut from the end.
archive_heads = Table(
    "event_archive_heads",
    metadata,
    Column("account_id", String(200), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

#: The router's attempts (tollgate.attempts.v1) of requests not rated yet: a work list, not a read model. A row
#: leaves when its request is rated; a request whose usage event never came is rated from its attempts
#: (:mod:`tollgate_metering.reconciler`). Usage counts are what the provider reported for that attempt.
attempt_usage = Table(
    "attempt_usage",
    metadata,
    Column("request_id", String(200), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("account_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(200), nullable=False),
    Column("upstream_model", String(200), nullable=False),
    Column("upstream_request_id", String(200), nullable=False),
    Column("succeeded", Boolean, nullable=False),
    Column("usage_unknown", Boolean, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_prompt_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("ended_at_unix_ms", BigInteger, nullable=False),
    #: The prompt tokens the caller (ingress) sized the hold with (AttemptRecorded.prompt_tokens_estimate; 0 =
    #: unknown): what a request with unknown usage is charged by when no usage event came.
    Column("prompt_tokens_estimate", BigInteger, nullable=False, server_default="0"),
    #: When metering stored it (its clock): a request is reconciled this long after its last attempt arrived.
    Column("seen_at_unix_ms", BigInteger, nullable=False, index=True),
    PrimaryKeyConstraint("request_id", "attempt"),
)
