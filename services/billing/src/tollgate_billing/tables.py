"""Billing's tables: the read model the projections maintain, plus the messaging plumbing (outbox, dedupe, offsets).

Every row here is derived from the events in ``tollgate.billing.v1`` by :mod:`tollgate_billing.projections`, so a
fresh database replayed from the log holds the same rows (the outbox, kept after publishing, is the durable copy
of that log). On PostgreSQL the tables live in the ``billing`` schema (the connection's search_path).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)
from tollgate_common.db import messaging_tables

__all__ = [
    "accounts",
    "adjustments",
    "api_keys",
    "budgets",
    "credit_grants",
    "groups",
    "holds",
    "ledger_postings",
    "ledger_transactions",
    "messaging",
    "metadata",
    "promo_grants",
    "statements",
    "wallets",
    "webhook_attempts",
    "webhook_cursor",
    "webhook_deliveries",
    "webhook_secrets",
    "webhooks",
]

metadata = MetaData()
messaging = messaging_tables(metadata, consumer=True)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    #: IANA zone the account's budget periods turn over in (migration 0006).
    Column("time_zone", String(64), nullable=False, server_default="UTC"),
)

#: One prepaid balance per account. ``held_nanos`` is the sum of its open holds; available = balance − held.
wallets = Table(
    "wallets",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("balance_nanos", BigInteger, nullable=False),
    Column("held_nanos", BigInteger, nullable=False),
    #: "Balance below X" (alerts.py, migration 0008): the threshold (0 = off) and the revision of its setting; low =
    #: a BalanceLow (number low_balance_sequence, at low_balance_at) not yet ended by a BalanceRestored.
    Column("low_balance_nanos", BigInteger, nullable=False, server_default="0"),
    Column("low_balance_revision", BigInteger, nullable=False, server_default="0"),
    Column("low_balance_low", Boolean, nullable=False, server_default=false()),
    Column("low_balance_sequence", BigInteger, nullable=False, server_default="0"),
    Column("low_balance_at_unix_ms", BigInteger, nullable=True),
    Column("low_balance_updated_at_unix_ms", BigInteger, nullable=True),
)

#: API keys by hash only. ``usage_nanos`` = captured through this key, ``held_nanos`` = its open holds.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(100), primary_key=True),
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(20), nullable=False),
    Column("label", String(200), nullable=False),
    Column("has_limit", Boolean, nullable=False),
    Column("limit_nanos", BigInteger, nullable=False),
    Column("usage_nanos", BigInteger, nullable=False),
    Column("held_nanos", BigInteger, nullable=False),
    #: JSON list, sorted; empty = every model.
    Column("allowed_models", Text, nullable=False),
    Column("team", String(200), nullable=False),
    Column("project", String(200), nullable=False),
    Column("rate_limit_rpm", Integer, nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    #: The key may manage its own account's DLP policy (ingress's admin API).
    Column("account_admin", Boolean, nullable=False, server_default=false()),
    #: Lifecycle (migration 0003): NULL = never expires / not revoked.
    Column("expires_at_unix_ms", BigInteger, nullable=True),
    Column("revoked_at_unix_ms", BigInteger, nullable=True),
    #: After a rotation, the old secret's hash works until previous_valid_until_unix_ms (the grace period).
    Column("previous_key_hash", String(64), nullable=True),
    Column("previous_prefix", String(20), nullable=True),
    Column("previous_valid_until_unix_ms", BigInteger, nullable=True),
    #: Changes since creation (the n of api_key.updated:<key_id>:<n>); guards concurrent admin writes.
    Column("revision", BigInteger, nullable=False, server_default="0"),
    Column("updated_at_unix_ms", BigInteger, nullable=True),
)
Index("ix_api_keys_account", api_keys.c.account_id)
Index("ux_api_keys_previous_key_hash", api_keys.c.previous_key_hash, unique=True)

#: Teams and projects inside an account (kind "team" | "project"); a key's team / project column holds a group_id.
groups = Table(
    "groups",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("group_id", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    #: NULL = active; an archived group takes no new keys.
    Column("archived_at_unix_ms", BigInteger, nullable=True),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at_unix_ms", BigInteger, nullable=True),
    PrimaryKeyConstraint("account_id", "kind", "group_id"),
)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", String(200), primary_key=True),
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("key_id", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    #: open | captured | expired | reconciled (see domain.HoldStatus)
    Column("status", String(20), nullable=False),
    Column("captured_nanos", BigInteger, nullable=False),
    Column("released_nanos", BigInteger, nullable=False),
    Column("refunded_nanos", BigInteger, nullable=False),
    #: Rated price of the usage that closed it (after an expiry: of the late usage), when known.
    Column("rated_nanos", BigInteger, nullable=True),
    Column("usage_event_id", String(200), nullable=False),
    #: Set when the TTL closed the hold: someone should look at why no usage came.
    Column("needs_reconciliation", Boolean, nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    Column("expires_at_unix_ms", BigInteger, nullable=False),
    Column("closed_at_unix_ms", BigInteger, nullable=True),
    #: Comma-separated ids of the budgets the hold counted against when placed ("" = none; migration 0006).
    Column("budget_ids", Text, nullable=False, server_default=""),
)
Index("ix_holds_open_expiry", holds.c.status, holds.c.expires_at_unix_ms)
#: A key's holds of the last minute: the RPM window Authorize counts (migration 0007).
Index("ix_holds_key_created", holds.c.key_id, holds.c.created_at_unix_ms)

#: Spend limits (budgets.py). ``spent_nanos`` is the spend of the period starting at ``period_start_unix_ms`` (0 for
#: ``total``): once the current period is later, the stored spend is of a past one and counts as 0. ``held_nanos`` is
#: the sum of the open holds counted against it. One budget per (account, scope, scope id, period).
budgets = Table(
    "budgets",
    metadata,
    Column("budget_id", String(100), primary_key=True),
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("scope", String(10), nullable=False),
    Column("scope_id", String(100), nullable=False),
    Column("period", String(10), nullable=False),
    Column("limit_nanos", BigInteger, nullable=False),
    Column("spent_nanos", BigInteger, nullable=False),
    Column("held_nanos", BigInteger, nullable=False),
    Column("period_start_unix_ms", BigInteger, nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    Column("updated_at_unix_ms", BigInteger, nullable=True),
    Column("revision", BigInteger, nullable=False),
    #: Alerts (alerts.py, migration 0008): the thresholds in percent of the limit ("50,80,100"; "" = none), and the
    #: last BudgetThresholdCrossed: its percent, time, and the period and revision it belongs to (a threshold is armed
    #: again once either differs from the budget's).
    Column("alert_thresholds", String(100), nullable=False, server_default="50,80,100"),
    Column("last_crossed_percent", Integer, nullable=False, server_default="0"),
    Column("last_crossed_at_unix_ms", BigInteger, nullable=True),
    Column("last_crossed_period_start_unix_ms", BigInteger, nullable=False, server_default="0"),
    Column("last_crossed_revision", BigInteger, nullable=False, server_default="0"),
)
Index("ux_budgets_scope_period", budgets.c.account_id, budgets.c.scope, budgets.c.scope_id, budgets.c.period,
      unique=True)

#: AddCredits idempotency: one row per (account, idempotency key).
credit_grants = Table(
    "credit_grants",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("transaction_id", String(100), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    PrimaryKeyConstraint("account_id", "idempotency_key"),
)

ledger_transactions = Table(
    "ledger_transactions",
    metadata,
    Column("transaction_id", String(200), primary_key=True),
    #: The customer account the transaction belongs to (for per-account listings).
    Column("account_id", String(100), nullable=False),
    Column("kind", String(50), nullable=False),
    Column("reference", String(200), nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
)
Index("ix_ledger_transactions_account", ledger_transactions.c.account_id)
#: A statement's month: the account's transactions in [start, end) (migration 0008 credits_statements).
Index("ix_ledger_transactions_account_time", ledger_transactions.c.account_id, ledger_transactions.c.created_at_unix_ms)

ledger_postings = Table(
    "ledger_postings",
    metadata,
    #: Insertion order, newest last (BIGINT on PostgreSQL; SQLite's rowid alias must be INTEGER).
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("transaction_id", String(200), ForeignKey("ledger_transactions.transaction_id"), nullable=False),
    Column("ledger_account", String(200), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
)
Index("ix_ledger_postings_transaction", ledger_postings.c.transaction_id)
Index("ix_ledger_postings_account", ledger_postings.c.ledger_account)

#: Promotional credits (``CreditsAdded.credit_kind = "promotional"``): one row per grant. ``expired_at_unix_ms`` is set
#: once, by the sweeper's ``PromoCreditExpired``, with what was left of it (credits.py decides how much).
promo_grants = Table(
    "promo_grants",
    metadata,
    Column("transaction_id", String(100), primary_key=True),
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("granted_at_unix_ms", BigInteger, nullable=False),
    Column("expires_at_unix_ms", BigInteger, nullable=False),
    Column("expired_at_unix_ms", BigInteger, nullable=True),
    Column("expired_nanos", BigInteger, nullable=True),
)
Index("ix_promo_grants_due", promo_grants.c.expired_at_unix_ms, promo_grants.c.expires_at_unix_ms)

#: Refunds and credit notes by their client-supplied id (kind "refund" | "credit_note"): the idempotency record.
#: ``reference`` is the refunded request id, or the period a credit note is against.
adjustments = Table(
    "adjustments",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("adjustment_id", String(100), nullable=False),
    Column("reference", String(200), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("transaction_id", String(200), nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("account_id", "kind", "adjustment_id"),
)
Index("ix_adjustments_reference", adjustments.c.account_id, adjustments.c.reference)

#: Closed monthly statements (``StatementClosed``): immutable; ``document`` is the ``tollgate.events.v1.Statement``.
statements = Table(
    "statements",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), nullable=False),
    Column("period", String(7), nullable=False),
    Column("events_sha256", String(64), nullable=False),
    Column("event_count", BigInteger, nullable=False),
    Column("closing_balance_nanos", BigInteger, nullable=False),
    Column("document", LargeBinary, nullable=False),
    PrimaryKeyConstraint("account_id", "period"),
)

#: An account's alert webhook (webhook_admin.py), from WebhookSet / WebhookSecretRotated / WebhookDeleted. A deleted
#: one keeps its row (url "", deleted_at set) so the revision, which numbers its events, keeps counting.
webhooks = Table(
    "webhooks",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), primary_key=True),
    Column("url", String(2048), nullable=False),
    #: Comma-separated event types (webhook_rules.EVENT_TYPES).
    Column("events", String(200), nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("secret_version", BigInteger, nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    Column("updated_at_unix_ms", BigInteger, nullable=False),
    Column("deleted_at_unix_ms", BigInteger, nullable=True),
)

# --- webhook delivery: operational state, like the outbox (not derived from the log, not compared by rebuild) ----

#: The signing secret of each account's webhook. It cannot be a hash (billing signs with it), and it is never on
#: the log, so a database rebuilt from the log has none: the operator rotates the secret after such a restore.
webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("account_id", String(100), ForeignKey("accounts.account_id"), primary_key=True),
    Column("secret_version", BigInteger, nullable=False),
    Column("secret", String(100), nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
)

#: How far the webhook queue has read billing's outbox (its ``id``), per reader (one: "alerts").
webhook_cursor = Table(
    "webhook_cursor",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("last_outbox_id", BigInteger, nullable=False),
)

#: One row per (account, alert event): the body sent (signed afresh per attempt) and where its delivery stands.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("account_id", String(100), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("body", Text, nullable=False),
    #: pending | delivered | failed
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at_unix_ms", BigInteger, nullable=False),
    #: A worker that claimed it holds it until then (a killed worker's claim runs out; the delivery is retried).
    Column("claimed_until_unix_ms", BigInteger, nullable=False),
    Column("last_status_code", Integer, nullable=False),
    Column("last_error", String(500), nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    Column("delivered_at_unix_ms", BigInteger, nullable=True),
)
Index("ux_webhook_deliveries_event", webhook_deliveries.c.account_id, webhook_deliveries.c.event_id, unique=True)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at_unix_ms)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("delivery_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at_unix_ms", BigInteger, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("error", String(500), nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("delivery_id", "attempt"),
)

#: A closing statement reads the events it covers from the outbox (billing's log) by id.
Index("ix_outbox_event_id", messaging.outbox.c.event_id)
