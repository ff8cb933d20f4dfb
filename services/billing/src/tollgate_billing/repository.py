"""Billing's storage: the queries the application needs, and ``record`` — the one way state changes live.

``record`` applies an event with the projection code (guards on) and writes it to the outbox in the caller's
transaction, so the state change and its event commit together or not at all. The outbox rows are kept after
publishing: they are billing's durable event log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import bindparam, func, select, update
from tollgate.events.v1 import billing_pb2
from tollgate_common.bulk import insert_rows, select_rows
from tollgate_common.events import Envelope, Topics, envelope_for

from . import projections
from .alert_changes import new_alerts
from .alerts import parse_thresholds
from .budgets import BudgetRecord
from .domain import ApiKeyGrant, HoldStatus, HoldView
from .groups import GroupRecord
from .key_lifecycle import KeyRecord
from .projections import Executor
from .tables import (
    accounts,
    api_keys,
    budgets,
    credit_grants,
    groups,
    holds,
    ledger_postings,
    ledger_transactions,
    messaging,
    promo_grants,
    wallets,
)

__all__ = [
    "SERVICE",
    "AccountRow",
    "KeyRow",
    "LedgerRow",
    "WalletRow",
    "envelope",
    "event_account",
    "event_id",
    "record",
    "record_alerts",
    "record_many",
]

SERVICE = "billing"


_EVENT_IDS: dict[type[Message], Callable[[Any], str]] = {
    billing_pb2.AccountCreated: lambda e: f"account.created:{e.account_id}",
    billing_pb2.ApiKeyCreated: lambda e: f"api_key.created:{e.key_id}",
    billing_pb2.ApiKeyUpdated: lambda e: f"api_key.updated:{e.key_id}:{e.revision}",
    billing_pb2.ApiKeyRevoked: lambda e: f"api_key.revoked:{e.key_id}",
    billing_pb2.ApiKeyRotated: lambda e: f"api_key.rotated:{e.key_id}:{e.revision}",
    billing_pb2.GroupCreated: lambda e: f"group.created:{e.account_id}:{e.kind}:{e.group_id}",
    billing_pb2.GroupUpdated: lambda e: f"group.updated:{e.account_id}:{e.kind}:{e.group_id}:{e.revision}",
    billing_pb2.BudgetCreated: lambda e: f"budget.created:{e.budget_id}",
    billing_pb2.BudgetUpdated: lambda e: f"budget.updated:{e.budget_id}:{e.revision}",
    billing_pb2.BudgetDeleted: lambda e: f"budget.deleted:{e.budget_id}",
    billing_pb2.BudgetThresholdCrossed: lambda e: (f"budget.threshold_crossed:{e.budget_id}:{e.budget_revision}:"
                                                   f"{e.period_start_unix_ms}:{e.threshold_percent}"),
    billing_pb2.BalanceAlertSet: lambda e: f"balance_alert.set:{e.account_id}:{e.revision}",
    billing_pb2.BalanceLow: lambda e: f"balance.low:{e.account_id}:{e.sequence}",
    billing_pb2.BalanceRestored: lambda e: f"balance.restored:{e.account_id}:{e.sequence}",
    billing_pb2.CreditsAdded: lambda e: f"credits.added:{e.transaction.transaction_id}",
    billing_pb2.HoldPlaced: lambda e: f"hold.placed:{e.hold_id}",
    billing_pb2.HoldCaptured: lambda e: f"hold.captured:{e.hold_id}",
    billing_pb2.HoldExpired: lambda e: f"hold.expired:{e.hold_id}",
    billing_pb2.HoldReconciled: lambda e: f"hold.reconciled:{e.hold_id}",
    billing_pb2.PromoCreditExpired: lambda e: f"promo.expired:{e.grant_transaction_id}",
    billing_pb2.ChargeRefunded: lambda e: f"charge.refunded:{e.account_id}:{e.refund_id}",
    billing_pb2.CreditNoteIssued: lambda e: f"credit_note.issued:{e.account_id}:{e.credit_note_id}",
    billing_pb2.StatementClosed: lambda e: f"statement.closed:{e.account_id}:{e.period}",
    billing_pb2.WebhookSet: lambda e: f"webhook.set:{e.account_id}:{e.revision}",
    billing_pb2.WebhookSecretRotated: lambda e: f"webhook.secret_rotated:{e.account_id}:{e.revision}",
    billing_pb2.WebhookDeleted: lambda e: f"webhook.deleted:{e.account_id}:{e.revision}",
}


def event_id(event: Message) -> str:
    """Deterministic CloudEvent ids: the same fact always has the same id, so duplicates dedupe downstream."""
    make = _EVENT_IDS.get(type(event))
    if make is None:
        raise ValueError(f"{type(event).__name__} is not a billing event")
    return make(event)


def event_account(event: Message) -> str:
    """Every billing event belongs to one account: the Kafka key and ce_subject (per-account order)."""
    return str(event.account_id)  # type: ignore[attr-defined]


def envelope(event: Message, at_unix_ms: int | None = None) -> Envelope:
    return envelope_for(event, id=event_id(event), service=SERVICE, subject=event_account(event), at_unix_ms=at_unix_ms)


async def record(conn: Executor, event: Message) -> None:
    """Apply ``event`` live (guards on) and append it to the outbox, in the caller's transaction."""
    await projections.apply(conn, event, strict=True)
    await messaging.add_to_outbox(conn, Topics.BILLING, event_account(event), envelope(event))


def outbox_row(event: Message) -> tuple[str, str, str, str, bytes]:
    """The event's outbox row (topic, key, event id, headers, value), keyed by its account as ``record`` keys it.
    Made in the caller's context: the envelope carries the current trace."""
    env = envelope(event)
    # The same JSON as ``json.dumps([[k, v], …])`` (what the relay reads back), a third of its cost: the keys are
    # fixed ASCII names, only the values need escaping.
    headers = "[" + ", ".join(f'["{k}", {encode_basestring(v.decode())}]' for k, v in env.headers()) + "]"
    return Topics.BILLING, env.subject, env.id, headers, env.data


OUTBOX_COLUMNS = ("topic", "key", "event_id", "headers", "value")


async def record_many(conn: Executor, events: Sequence[Message],
                      hold_statuses: Mapping[str, str] | None = None) -> None:
    """``record`` for a batch (the usage consumer): one statement per table, outbox rows in one insert.
    ``hold_statuses``: see :func:`projections.apply_batch`."""
    if not events:
        return
    await projections.apply_batch(conn, events, strict=True, hold_statuses=hold_statuses)
    await insert_rows(conn, messaging.outbox, OUTBOX_COLUMNS, [outbox_row(event) for event in events])


async def record_alerts(conn: Executor, account_ids: Iterable[str], now_unix_ms: int, *,
                        budget_id: str | None = None) -> int:
    """After a change to these accounts' money or limits, in its transaction: record the alert events the rows now
    call for (:func:`alert_changes.new_alerts`); returns how many."""
    events = await new_alerts(conn, account_ids, now_unix_ms, budget_id=budget_id)
    await record_many(conn, events)
    return len(events)


# --- reads ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    account_id: str
    name: str
    currency: str
    created_at_unix_ms: int
    time_zone: str = "UTC"


@dataclass(frozen=True, slots=True)
class WalletRow:
    account_id: str
    currency: str
    balance_nanos: int
    held_nanos: int

    @property
    def available_nanos(self) -> int:
        return self.balance_nanos - self.held_nanos


@dataclass(frozen=True, slots=True)
class KeyRow:
    grant: ApiKeyGrant
    label: str
    usage_nanos: int
    held_nanos: int
    account_admin: bool


@dataclass(frozen=True, slots=True)
class LedgerRow:
    transaction_id: str
    kind: str
    ledger_account: str
    amount_nanos: int
    reference: str
    created_at_unix_ms: int
    #: The posting's position (``ledger_postings.id``): the cursor a page ends at.
    posting_id: int = 0


async def get_account(conn: Executor, account_id: str) -> AccountRow | None:
    row = (await conn.execute(select(accounts).where(accounts.c.account_id == account_id))).first()
    if row is None:
        return None
    return AccountRow(row.account_id, row.name, row.currency, row.created_at_unix_ms, row.time_zone)


async def get_wallet(conn: Executor, account_id: str, *, lock: bool = False) -> WalletRow | None:
    """The wallet; ``lock`` keeps its row locked until commit (PostgreSQL; SQLite's writer holds the database), so
    a check on the balance and the write that follows it cannot be overtaken by another replica."""
    query = select(wallets).where(wallets.c.account_id == account_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        return None
    return WalletRow(row.account_id, row.currency, row.balance_nanos, row.held_nanos)


_KEY_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.account_id,
    accounts.c.currency,
    api_keys.c.allowed_models,
    api_keys.c.has_limit,
    api_keys.c.limit_nanos,
    api_keys.c.team,
    api_keys.c.project,
    api_keys.c.rate_limit_rpm,
    api_keys.c.label,
    api_keys.c.usage_nanos,
    api_keys.c.held_nanos,
    api_keys.c.account_admin,
    api_keys.c.expires_at_unix_ms,
    api_keys.c.revoked_at_unix_ms,
    api_keys.c.previous_valid_until_unix_ms,
)
_KEYS_WITH_ACCOUNT = select(*_KEY_COLUMNS).join(accounts, accounts.c.account_id == api_keys.c.account_id)
_KEY_BY_HASH = _KEYS_WITH_ACCOUNT.where(api_keys.c.key_hash == bindparam("p_hash"))
_KEY_BY_PREVIOUS_HASH = _KEYS_WITH_ACCOUNT.where(api_keys.c.previous_key_hash == bindparam("p_hash"))


async def find_key(conn: Executor, *, key_hash: str | None = None, key_id: str | None = None) -> KeyRow | None:
    """The key a secret (or a key id) names. A secret rotated out and still in its grace finds its key too, with
    the grace's end as the grant's ``valid_until``; revoked and expired keys are found (the caller refuses them,
    naming why)."""
    previous = False
    if key_hash is not None:
        row = (await conn.execute(_KEY_BY_HASH, {"p_hash": key_hash})).first()
        if row is None:  # only unknown (or rotated-out) secrets pay for the second look-up
            row = (await conn.execute(_KEY_BY_PREVIOUS_HASH, {"p_hash": key_hash})).first()
            previous = row is not None
    else:
        row = (await conn.execute(_KEYS_WITH_ACCOUNT.where(api_keys.c.key_id == key_id))).first()
    if row is None:
        return None
    ends = [t for t in (row.expires_at_unix_ms, row.previous_valid_until_unix_ms if previous else None) if t]
    if previous and not ends:  # a stored previous hash always has a grace end; be safe if it has not
        return None
    grant = ApiKeyGrant(
        key_id=row.key_id,
        account_id=row.account_id,
        currency=row.currency,
        allowed_models=frozenset(json.loads(row.allowed_models)),
        has_limit=bool(row.has_limit),
        limit_nanos=row.limit_nanos,
        team=row.team,
        project=row.project,
        rate_limit_rpm=row.rate_limit_rpm,
        valid_until_unix_ms=min(ends) if ends else 0,
        revoked=row.revoked_at_unix_ms is not None,
    )
    return KeyRow(
        grant=grant,
        label=row.label,
        usage_nanos=row.usage_nanos,
        held_nanos=row.held_nanos,
        account_admin=bool(row.account_admin),
    )


def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id, account_id=row.account_id, key_hash=row.key_hash, prefix=row.prefix, label=row.label,
        has_limit=bool(row.has_limit), limit_nanos=row.limit_nanos, usage_nanos=row.usage_nanos,
        allowed_models=tuple(json.loads(row.allowed_models)), team=row.team, project=row.project,
        rate_limit_rpm=row.rate_limit_rpm, account_admin=bool(row.account_admin),
        created_at_unix_ms=row.created_at_unix_ms, expires_at_unix_ms=row.expires_at_unix_ms,
        revoked_at_unix_ms=row.revoked_at_unix_ms, previous_key_hash=row.previous_key_hash,
        previous_prefix=row.previous_prefix,
        previous_valid_until_unix_ms=row.previous_valid_until_unix_ms, revision=row.revision,
        updated_at_unix_ms=row.updated_at_unix_ms,
    )


async def key_record(conn: Executor, account_id: str, key_id: str) -> KeyRecord | None:
    """One key of one account (a key id of another account is not found: ids are not a way across accounts)."""
    row = (
        await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.account_id == account_id))
    ).first()
    return None if row is None else _key_record(row)


async def key_records(conn: Executor, account_id: str, *, include_revoked: bool = False) -> list[KeyRecord]:
    query = select(api_keys).where(api_keys.c.account_id == account_id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at_unix_ms.is_(None))
    rows = await conn.execute(query.order_by(api_keys.c.created_at_unix_ms, api_keys.c.key_id))
    return [_key_record(row) for row in rows]


def _group_record(row: Any) -> GroupRecord:
    return GroupRecord(
        account_id=row.account_id, kind=row.kind, group_id=row.group_id, name=row.name,
        created_at_unix_ms=row.created_at_unix_ms, archived_at_unix_ms=row.archived_at_unix_ms,
        revision=row.revision, updated_at_unix_ms=row.updated_at_unix_ms,
    )


async def group_record(conn: Executor, account_id: str, kind: str, group_id: str) -> GroupRecord | None:
    row = (
        await conn.execute(select(groups).where(groups.c.account_id == account_id, groups.c.kind == kind,
                                                groups.c.group_id == group_id))
    ).first()
    return None if row is None else _group_record(row)


async def group_records(conn: Executor, account_id: str, kind: str, *, include_archived: bool) -> list[GroupRecord]:
    query = select(groups).where(groups.c.account_id == account_id, groups.c.kind == kind)
    if not include_archived:
        query = query.where(groups.c.archived_at_unix_ms.is_(None))
    rows = await conn.execute(query.order_by(groups.c.created_at_unix_ms, groups.c.group_id))
    return [_group_record(row) for row in rows]


_BUDGETS = (select(budgets, accounts.c.time_zone).join(accounts, accounts.c.account_id == budgets.c.account_id))


def _budget_record(row: Any) -> BudgetRecord:
    return BudgetRecord(
        budget_id=row.budget_id, account_id=row.account_id, scope=row.scope, scope_id=row.scope_id,
        period=row.period, limit_nanos=row.limit_nanos, spent_nanos=row.spent_nanos, held_nanos=row.held_nanos,
        period_start_unix_ms=row.period_start_unix_ms, time_zone=row.time_zone,
        created_at_unix_ms=row.created_at_unix_ms, updated_at_unix_ms=row.updated_at_unix_ms, revision=row.revision,
        alert_thresholds=parse_thresholds(row.alert_thresholds), last_crossed_percent=row.last_crossed_percent,
        last_crossed_at_unix_ms=row.last_crossed_at_unix_ms,
        last_crossed_period_start_unix_ms=row.last_crossed_period_start_unix_ms,
    )


async def budget_record(conn: Executor, account_id: str, budget_id: str) -> BudgetRecord | None:
    """One budget of one account (another account's budget is not found)."""
    row = (await conn.execute(_BUDGETS.where(budgets.c.budget_id == budget_id,
                                             budgets.c.account_id == account_id))).first()
    return None if row is None else _budget_record(row)


async def budget_records(conn: Executor, account_id: str) -> list[BudgetRecord]:
    rows = await conn.execute(_BUDGETS.where(budgets.c.account_id == account_id)
                              .order_by(budgets.c.created_at_unix_ms, budgets.c.budget_id))
    return [_budget_record(row) for row in rows]


def _hold_view(row: object) -> HoldView:
    return HoldView(
        hold_id=row.hold_id,  # type: ignore[attr-defined]
        account_id=row.account_id,  # type: ignore[attr-defined]
        key_id=row.key_id,  # type: ignore[attr-defined]
        amount_nanos=row.amount_nanos,  # type: ignore[attr-defined]
        status=HoldStatus(row.status),  # type: ignore[attr-defined]
        captured_nanos=row.captured_nanos,  # type: ignore[attr-defined]
        expires_at_unix_ms=row.expires_at_unix_ms,  # type: ignore[attr-defined]
    )


async def find_hold(conn: Executor, hold_id: str) -> HoldView | None:
    row = (await conn.execute(select(holds).where(holds.c.hold_id == hold_id))).first()
    return None if row is None else _hold_view(row)


_HOLD_VIEW_COLUMNS = ("hold_id", "account_id", "key_id", "amount_nanos", "status", "captured_nanos",
                      "expires_at_unix_ms")


async def lock_holds(conn: Executor, hold_ids: Iterable[str]) -> dict[str, HoldView]:
    """The holds a batch of usage closes, locked until commit (PostgreSQL), so deciding and writing are atomic."""
    rows = await select_rows(conn, holds, "hold_id", _HOLD_VIEW_COLUMNS, sorted(set(hold_ids)), for_update=True)
    return {row[0]: HoldView(row[0], row[1], row[2], row[3], HoldStatus(row[4]), row[5], row[6]) for row in rows}


async def existing_accounts(conn: Executor, account_ids: Iterable[str]) -> set[str]:
    rows = await select_rows(conn, wallets, "account_id", ("account_id",), sorted(set(account_ids)))
    return {row[0] for row in rows}


async def due_holds(conn: Executor, now_unix_ms: int, limit: int) -> list[HoldView]:
    """Open holds whose TTL has passed, oldest first."""
    rows = await conn.execute(
        select(holds)
        .where(holds.c.status == HoldStatus.OPEN.value, holds.c.expires_at_unix_ms <= now_unix_ms)
        .order_by(holds.c.expires_at_unix_ms)
        .limit(limit)
    )
    return [_hold_view(row) for row in rows]


async def count_open_holds(conn: Executor, *, after_unix_ms: int, until_unix_ms: int) -> int:
    """Open holds whose deadline lies in (after, until]: past their TTL, kept open while usage lags."""
    return int((await conn.execute(
        select(func.count()).select_from(holds)
        .where(holds.c.status == HoldStatus.OPEN.value, holds.c.expires_at_unix_ms > after_unix_ms,
               holds.c.expires_at_unix_ms <= until_unix_ms)
    )).scalar_one())


async def find_credit(conn: Executor, account_id: str, idempotency_key: str) -> tuple[str, int] | None:
    """(transaction id, amount) of an earlier AddCredits with this idempotency key, if any."""
    row = (
        await conn.execute(
            select(credit_grants.c.transaction_id, credit_grants.c.amount_nanos).where(
                credit_grants.c.account_id == account_id, credit_grants.c.idempotency_key == idempotency_key
            )
        )
    ).first()
    return None if row is None else (str(row.transaction_id), int(row.amount_nanos))


async def promo_expiry(conn: Executor, transaction_id: str) -> int | None:
    """The expiry of the promotional credit granted by ``transaction_id``; None for a paid credit."""
    row = (await conn.execute(select(promo_grants.c.expires_at_unix_ms)
                              .where(promo_grants.c.transaction_id == transaction_id))).first()
    return None if row is None else int(row[0])


async def ledger_entries(
    conn: Executor, account_id: str, limit: int, before_posting_id: int | None = None
) -> list[LedgerRow]:
    """The postings of the transactions that belong to ``account_id`` (both legs), newest first, at most
    ``limit``, only those older than ``before_posting_id`` when given (keyset paging: no offset to drift)."""
    query = (
        select(
            ledger_postings.c.transaction_id,
            ledger_transactions.c.kind,
            ledger_postings.c.ledger_account,
            ledger_postings.c.amount_nanos,
            ledger_transactions.c.reference,
            ledger_transactions.c.created_at_unix_ms,
            ledger_postings.c.id,
        )
        .join(ledger_transactions, ledger_transactions.c.transaction_id == ledger_postings.c.transaction_id)
        .where(ledger_transactions.c.account_id == account_id)
    )
    if before_posting_id is not None:
        query = query.where(ledger_postings.c.id < before_posting_id)
    rows = await conn.execute(query.order_by(ledger_postings.c.id.desc()).limit(limit))
    return [LedgerRow(*row) for row in rows]


# --- the log ----------------------------------------------------------------------------------------------------


async def published_event_count(conn: Executor) -> int:
    t = messaging.outbox
    found = await conn.execute(
        select(func.count()).select_from(t).where(t.c.topic == Topics.BILLING, t.c.published_at_unix_ms.is_not(None))
    )
    return int(found.scalar_one())


async def mark_log_unpublished(conn: Executor) -> int:
    """Queue the whole kept log for publishing again (the broker lost it, e.g. an embedded broker restarted)."""
    t = messaging.outbox
    result = await conn.execute(
        update(t).where(t.c.topic == Topics.BILLING, t.c.published_at_unix_ms.is_not(None)).values(
            published_at_unix_ms=None
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
