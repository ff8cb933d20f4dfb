"""The reads behind promotional credits, refunds, credit notes and statements (repository.py's other queries stay
there; these are kept apart so each job's queries sit in one small module)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from tollgate_common.bulk import select_rows

from .credits import WalletPosting
from .domain import wallet_account
from .projections import Executor
from .tables import (
    adjustments,
    api_keys,
    holds,
    ledger_postings,
    ledger_transactions,
    messaging,
    promo_grants,
    statements,
)

__all__ = [
    "Adjustment",
    "DueGrant",
    "adjustment",
    "charged",
    "due_grants",
    "hold_details",
    "log_events",
    "month_transactions",
    "opening_balance",
    "promo_expiries",
    "refunded",
    "stored_statement",
    "wallet_postings",
]


@dataclass(frozen=True, slots=True)
class Adjustment:
    reference: str
    amount_nanos: int
    reason: str
    transaction_id: str
    created_at_unix_ms: int


async def adjustment(conn: Executor, account_id: str, kind: str, adjustment_id: str) -> Adjustment | None:
    row = (await conn.execute(select(adjustments).where(
        adjustments.c.account_id == account_id, adjustments.c.kind == kind,
        adjustments.c.adjustment_id == adjustment_id))).first()
    if row is None:
        return None
    return Adjustment(row.reference, row.amount_nanos, row.reason, row.transaction_id, row.created_at_unix_ms)


async def charged(conn: Executor, account_id: str, request_id: str) -> int | None:
    """What one request of the account was charged (captured, less an expiry's reconciliation); None = no hold."""
    row = (await conn.execute(select(holds.c.captured_nanos, holds.c.refunded_nanos, holds.c.status).where(
        holds.c.hold_id == request_id, holds.c.account_id == account_id).with_for_update())).first()
    if row is None or row.status == "open":
        return None
    return int(row.captured_nanos) - int(row.refunded_nanos)


async def refunded(conn: Executor, account_id: str, request_id: str) -> int:
    total = await conn.execute(select(func.coalesce(func.sum(adjustments.c.amount_nanos), 0)).where(
        adjustments.c.account_id == account_id, adjustments.c.reference == request_id,
        adjustments.c.kind == "refund"))
    return int(total.scalar_one())


@dataclass(frozen=True, slots=True)
class DueGrant:
    transaction_id: str
    account_id: str
    amount_nanos: int


async def due_grants(conn: Executor, now_unix_ms: int, limit: int) -> list[DueGrant]:
    rows = await conn.execute(
        select(promo_grants.c.transaction_id, promo_grants.c.account_id, promo_grants.c.amount_nanos)
        .where(promo_grants.c.expired_at_unix_ms.is_(None), promo_grants.c.expires_at_unix_ms <= now_unix_ms)
        .order_by(promo_grants.c.expires_at_unix_ms, promo_grants.c.transaction_id).limit(limit))
    return [DueGrant(*row) for row in rows]


async def promo_expiries(conn: Executor, account_id: str) -> dict[str, int]:
    rows = await conn.execute(select(promo_grants.c.transaction_id, promo_grants.c.expires_at_unix_ms)
                              .where(promo_grants.c.account_id == account_id))
    return {row[0]: int(row[1]) for row in rows}


async def wallet_postings(conn: Executor, account_id: str) -> list[WalletPosting]:
    """The account's wallet postings in ledger order (what credits.promo_remaining replays)."""
    rows = await conn.execute(
        select(ledger_transactions.c.transaction_id, ledger_transactions.c.kind, ledger_transactions.c.reference,
               ledger_postings.c.amount_nanos, ledger_transactions.c.created_at_unix_ms)
        .join(ledger_transactions, ledger_transactions.c.transaction_id == ledger_postings.c.transaction_id)
        .where(ledger_transactions.c.account_id == account_id,
               ledger_postings.c.ledger_account == wallet_account(account_id))
        .order_by(ledger_postings.c.id))
    return [WalletPosting(*row) for row in rows]


async def opening_balance(conn: Executor, account_id: str, before_unix_ms: int) -> int:
    total = await conn.execute(
        select(func.coalesce(func.sum(ledger_postings.c.amount_nanos), 0))
        .join(ledger_transactions, ledger_transactions.c.transaction_id == ledger_postings.c.transaction_id)
        .where(ledger_transactions.c.account_id == account_id,
               ledger_transactions.c.created_at_unix_ms < before_unix_ms,
               ledger_postings.c.ledger_account == wallet_account(account_id)))
    return int(total.scalar_one())


async def month_transactions(conn: Executor, account_id: str, start: int, end: int) -> list[tuple[str, str, str]]:
    """(transaction id, kind, reference) of the account's ledger transactions dated in [start, end)."""
    rows = await conn.execute(
        select(ledger_transactions.c.transaction_id, ledger_transactions.c.kind, ledger_transactions.c.reference)
        .where(ledger_transactions.c.account_id == account_id,
               ledger_transactions.c.created_at_unix_ms >= start, ledger_transactions.c.created_at_unix_ms < end))
    return [(row[0], row[1], row[2]) for row in rows]


async def log_events(conn: Executor, event_ids: Sequence[str]) -> list[tuple[int, str, bytes]]:
    """(log position, event id, bytes) of these events in billing's kept log (the outbox), in log order."""
    rows = await select_rows(conn, messaging.outbox, "event_id", ("id", "event_id", "value"), sorted(set(event_ids)))
    return sorted((int(r[0]), str(r[1]), bytes(r[2])) for r in rows)


async def hold_details(conn: Executor, hold_ids: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """request id → the hold's model, and → its key's project (now): for events that carry neither."""
    if not hold_ids:
        return {}, {}
    rows = await select_rows(conn, holds, "hold_id", ("hold_id", "model", "key_id"), sorted(set(hold_ids)))
    key_ids = sorted({r[2] for r in rows if r[2]})
    keys = await select_rows(conn, api_keys, "key_id", ("key_id", "project"), key_ids) if key_ids else []
    project = {k[0]: k[1] for k in keys}
    return {r[0]: r[1] for r in rows}, {r[0]: project.get(r[2], "") for r in rows}


async def stored_statement(conn: Executor, account_id: str, period: str) -> bytes | None:
    row = (await conn.execute(select(statements.c.document).where(
        statements.c.account_id == account_id, statements.c.period == period))).first()
    return None if row is None else bytes(row[0])
