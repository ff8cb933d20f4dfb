"""Projections: how billing events change the tables. The ONE place billing state is written.

The live path and the rebuild call the same functions, so a database replayed from ``tollgate.billing.v1`` holds
what the live one holds. ``strict=True`` (live) adds the guards that make a decision atomic — a hold is placed only
if ``balance − held ≥ amount`` (and, for a key with a limit, ``limit − usage − held ≥ amount``) in the same UPDATE,
and a hold is closed only while it is still open (its row locked) — and raises the caller-facing error when a guard
fails. In a replay (``strict=False``) an event is a fact already decided: it is applied as recorded, and an event
that does not fit the stored rows raises :class:`~tollgate_billing.errors.InconsistentEvent`.

Events are applied in batches, one statement per table and kind (a Kafka batch of usage, a replay batch), which is
equivalent to applying them one by one in order: kinds are applied in causal order (account → teams/projects →
key → key changes, in their own order → budget changes, in theirs → credits → placed → captured → expired →
reconciled → promo expiries, refunds and credit notes → closed statements (credit_changes.py); the budgets'
money, see budget_changes.py; alerts, in their own order, see alert_changes.py; webhook settings last,
webhook_changes.py), a hold only ever moves forward along that order, and money moves are additive. A single
event (Authorize, an admin call) is a batch of one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from google.protobuf.message import Message
from sqlalchemy import bindparam, insert, or_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from tollgate.events.v1 import billing_pb2
from tollgate_common.bulk import insert_rows, select_rows, update_rows

from . import alert_changes, budget_changes, credit_changes, group_changes, key_changes, webhook_changes
from .domain import HoldStatus
from .errors import ConcurrentUpdate, InconsistentEvent, InsufficientBalance, KeyLimitExceeded
from .tables import accounts, api_keys, credit_grants, holds, ledger_postings, ledger_transactions, wallets

__all__ = ["Executor", "apply", "apply_batch"]

#: Projections run on a plain connection (the application) or inside the consumer's session.
Executor: TypeAlias = AsyncConnection | AsyncSession

#: Causal order of the kinds inside one batch.
_KINDS: tuple[type[Message], ...] = (
    billing_pb2.AccountCreated,
    billing_pb2.GroupCreated,
    billing_pb2.GroupUpdated,
    billing_pb2.ApiKeyCreated,
    *key_changes.KINDS,
    *budget_changes.ADMIN_KINDS,
    billing_pb2.CreditsAdded,
    billing_pb2.HoldPlaced,
    billing_pb2.HoldCaptured,
    billing_pb2.HoldExpired,
    billing_pb2.HoldReconciled,
    *credit_changes.MONEY_KINDS,
    billing_pb2.StatementClosed,
    *alert_changes.KINDS,
    *webhook_changes.KINDS,
)
_CHUNK = 500

# Statements are built once: Authorize runs them on every request, and building (and cache-keying) a fresh
# statement costs more CPU than executing it on SQLite.
_INSERT_ACCOUNT = insert(accounts)
_INSERT_WALLET = insert(wallets)
_INSERT_KEY = insert(api_keys)
_INSERT_CREDIT = insert(credit_grants)
_TRANSACTION_COLUMNS = ("transaction_id", "account_id", "kind", "reference", "created_at_unix_ms")
_POSTING_COLUMNS = ("transaction_id", "ledger_account", "amount_nanos")
_INSERT_HOLD = insert(holds)
_MOVE_WALLET = (
    update(wallets)
    .where(wallets.c.account_id == bindparam("p_account"))
    .values(balance_nanos=wallets.c.balance_nanos + bindparam("p_balance"),
            held_nanos=wallets.c.held_nanos + bindparam("p_held"))
)
_MOVE_KEY = (
    update(api_keys)
    .where(api_keys.c.key_id == bindparam("p_key"))
    .values(usage_nanos=api_keys.c.usage_nanos + bindparam("p_usage"),
            held_nanos=api_keys.c.held_nanos + bindparam("p_held"))
)
#: The atomic balance check: held grows only while balance − held covers the amount.
_RESERVE_WALLET = (
    update(wallets)
    .where(wallets.c.account_id == bindparam("p_account"),
           wallets.c.balance_nanos - wallets.c.held_nanos >= bindparam("p_amount"))
    .values(held_nanos=wallets.c.held_nanos + bindparam("p_amount"))
)
#: The atomic key-limit check: a key without a limit always passes.
_RESERVE_KEY = (
    update(api_keys)
    .where(
        api_keys.c.key_id == bindparam("p_key"),
        or_(api_keys.c.has_limit.is_(False),
            api_keys.c.limit_nanos - api_keys.c.usage_nanos - api_keys.c.held_nanos >= bindparam("p_amount")),
    )
    .values(held_nanos=api_keys.c.held_nanos + bindparam("p_amount"))
)
#: A capture closes an open hold (rows: hold_id, then these columns), in one plain-SQL statement per batch.
_CAPTURE_COLUMNS = ("status", "captured_nanos", "released_nanos", "rated_nanos", "usage_event_id",
                    "closed_at_unix_ms")
_STILL_OPEN = f"\"holds\".\"status\" = '{HoldStatus.OPEN.value}'"
_EXPIRE_HOLD = (
    update(holds)
    .where(holds.c.hold_id == bindparam("p_hold"), holds.c.status == HoldStatus.OPEN.value)
    .values(status=HoldStatus.EXPIRED.value, captured_nanos=bindparam("p_amount"), released_nanos=0,
            needs_reconciliation=True, closed_at_unix_ms=bindparam("p_at"))
)
_RECONCILE_HOLD = (
    update(holds)
    .where(holds.c.hold_id == bindparam("p_hold"), holds.c.status == HoldStatus.EXPIRED.value)
    .values(status=HoldStatus.RECONCILED.value, refunded_nanos=bindparam("p_refunded"),
            rated_nanos=bindparam("p_rated"), usage_event_id=bindparam("p_usage_event"))
)


async def apply(conn: Executor, event: Message, *, strict: bool = False) -> None:
    """Apply one billing event to the tables (inside the caller's transaction)."""
    await apply_batch(conn, [event], strict=strict)


async def apply_batch(conn: Executor, events: Sequence[Message], *, strict: bool = False,
                      hold_statuses: Mapping[str, str] | None = None) -> None:
    """Apply billing events, as if one by one in order, inside the caller's transaction. ``hold_statuses``: the
    status of holds the caller read locked in this transaction before deciding (not read again); holds placed in
    the same batch are then not among them, so a batch with placements must not pass it."""
    by_kind: dict[type[Message], list[Any]] = {kind: [] for kind in _KINDS}
    changes: list[Any] = []  # one list for every kind of key change: they apply in their order
    by_kind.update({kind: changes for kind in key_changes.KINDS})
    budget_admin: list[Any] = []  # created / updated / deleted, in their order
    by_kind.update({kind: budget_admin for kind in budget_changes.ADMIN_KINDS})
    alerts: list[Any] = []  # every kind of alert event, in their order (a BalanceLow, then its BalanceRestored)
    by_kind.update({kind: alerts for kind in alert_changes.KINDS})
    webhook_events: list[Any] = []  # set / rotated / deleted, in their order
    by_kind.update({kind: webhook_events for kind in webhook_changes.KINDS})
    adjustments: list[Any] = []  # promo expiries, refunds, credit notes, in their order
    by_kind.update({kind: adjustments for kind in credit_changes.MONEY_KINDS})
    for event in events:
        bucket = by_kind.get(type(event))
        if bucket is None:
            raise InconsistentEvent(f"{type(event).__name__} is not a billing event")
        bucket.append(event)
    moves = _Moves()
    await _accounts_created(conn, by_kind[billing_pb2.AccountCreated])
    await group_changes.apply_created(conn, by_kind[billing_pb2.GroupCreated])
    await group_changes.apply_updated(conn, by_kind[billing_pb2.GroupUpdated], strict=strict)
    await _api_keys_created(conn, by_kind[billing_pb2.ApiKeyCreated])
    await key_changes.apply(conn, changes, strict=strict)
    await budget_changes.apply_admin(conn, budget_admin, strict=strict)
    _credits_added(by_kind[billing_pb2.CreditsAdded], moves)
    if by_kind[billing_pb2.CreditsAdded]:
        await _execute(conn, _INSERT_CREDIT, [
            {"account_id": ev.account_id, "idempotency_key": ev.idempotency_key,
             "transaction_id": ev.transaction.transaction_id, "amount_nanos": ev.amount_nanos}
            for ev in by_kind[billing_pb2.CreditsAdded]
        ])
        await credit_changes.apply_grants(conn, by_kind[billing_pb2.CreditsAdded])
        await moves.flush(conn)  # a guarded hold in the same batch must see the credit
    await _holds_placed(conn, by_kind[billing_pb2.HoldPlaced], moves, strict)
    await _holds_captured(conn, by_kind[billing_pb2.HoldCaptured], moves, strict,
                          None if by_kind[billing_pb2.HoldPlaced] else hold_statuses)
    await _holds_expired(conn, by_kind[billing_pb2.HoldExpired], moves, strict)
    await _holds_reconciled(conn, by_kind[billing_pb2.HoldReconciled], moves, strict)
    await credit_changes.apply_money(conn, adjustments, moves, strict=strict)
    await moves.flush(conn)
    await budget_changes.apply_money(conn, by_kind[billing_pb2.HoldPlaced], by_kind[billing_pb2.HoldCaptured],
                                     by_kind[billing_pb2.HoldExpired], by_kind[billing_pb2.HoldReconciled])
    await credit_changes.apply_statements(conn, by_kind[billing_pb2.StatementClosed])
    await alert_changes.apply(conn, alerts, strict=strict)
    await webhook_changes.apply(conn, webhook_events, strict=strict)


# --- plumbing ---------------------------------------------------------------------------------------------------


async def _execute(conn: Executor, statement: Any, rows: list[dict[str, Any]]) -> int:
    """One statement for many rows (executemany), in chunks; returns the row count where the driver reports it."""
    total = 0
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        result = await conn.execute(statement, chunk[0] if len(chunk) == 1 else chunk)
        total += max(0, int(result.rowcount))  # type: ignore[attr-defined]
    return total


def _counts_are_exact(conn: Executor, rows: int) -> bool:
    """Single-row statements always report a row count; asyncpg's executemany does not."""
    if rows == 1:
        return True
    bind = conn.get_bind() if isinstance(conn, AsyncSession) else conn
    return bool(bind.dialect.supports_sane_multi_rowcount)


@dataclass
class _Moves:
    """Money moves of a batch, summed per row: one UPDATE per wallet and per key, in a stable (lock) order."""

    wallets: dict[str, list[int]] = field(default_factory=dict)  # account -> [balance, held]
    keys: dict[str, list[int]] = field(default_factory=dict)  # key -> [usage, held]
    transactions: list[tuple[Any, ...]] = field(default_factory=list)
    postings: list[tuple[Any, ...]] = field(default_factory=list)

    def wallet(self, account_id: str, *, balance: int = 0, held: int = 0) -> None:
        move = self.wallets.setdefault(account_id, [0, 0])
        move[0] += balance
        move[1] += held

    def key(self, key_id: str, *, usage: int = 0, held: int = 0) -> None:
        """Key counters follow the money; a charge for a key billing does not know (unheld usage) has no row."""
        if not key_id:
            return
        move = self.keys.setdefault(key_id, [0, 0])
        move[0] += usage
        move[1] += held

    def ledger(self, account_id: str, txn: billing_pb2.LedgerTransaction) -> None:
        if not txn.postings or sum(p.amount_nanos for p in txn.postings) != 0:
            raise InconsistentEvent(f"ledger transaction {txn.transaction_id} does not sum to zero")
        self.transactions.append(
            (txn.transaction_id, account_id, txn.kind, txn.reference, txn.created_at_unix_ms))
        self.postings.extend((txn.transaction_id, p.ledger_account, p.amount_nanos) for p in txn.postings)

    async def flush(self, conn: Executor) -> None:
        if self.transactions:
            await insert_rows(conn, ledger_transactions, _TRANSACTION_COLUMNS, self.transactions)
            await insert_rows(conn, ledger_postings, _POSTING_COLUMNS, self.postings)
        wallet_rows = [{"p_account": a, "p_balance": b, "p_held": h}
                       for a, (b, h) in sorted(self.wallets.items()) if b or h]
        if wallet_rows:
            moved = await _execute(conn, _MOVE_WALLET, wallet_rows)
            if _counts_are_exact(conn, len(wallet_rows)) and moved != len(wallet_rows):
                raise InconsistentEvent("an event moves money in a wallet that does not exist")
        key_rows = [{"p_key": k, "p_usage": u, "p_held": h} for k, (u, h) in sorted(self.keys.items()) if u or h]
        if key_rows:
            await _execute(conn, _MOVE_KEY, key_rows)
        self.wallets.clear()
        self.keys.clear()
        self.transactions.clear()
        self.postings.clear()


async def _hold_statuses(conn: Executor, hold_ids: Iterable[str],
                         known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Current status of the holds a batch closes, their rows locked until commit (PostgreSQL; SQLite runs one
    writer at a time anyway), so the decision and the write cannot be overtaken by the sweeper or another replica.
    ``known``: what the caller already read locked in this transaction for every one of these ids (the usage
    consumer), not read again."""
    ids = sorted(set(hold_ids))
    if known is not None:  # complete for these ids: one not in it does not exist
        return {i: known[i] for i in ids if i in known}
    rows = await select_rows(conn, holds, "hold_id", ("hold_id", "status"), ids, for_update=True)
    return {row.hold_id: row.status for row in rows}


def _unfit(strict: bool, message: str) -> Exception:
    return ConcurrentUpdate(message) if strict else InconsistentEvent(message)


# --- one function per kind --------------------------------------------------------------------------------------


async def _accounts_created(conn: Executor, events: list[billing_pb2.AccountCreated]) -> None:
    if not events:
        return
    await _execute(conn, _INSERT_ACCOUNT, [
        {"account_id": ev.account_id, "name": ev.name, "currency": ev.currency,
         "created_at_unix_ms": ev.created_at_unix_ms, "time_zone": ev.time_zone or "UTC"}
        for ev in events
    ])
    await _execute(conn, _INSERT_WALLET, [
        {"account_id": ev.account_id, "currency": ev.currency, "balance_nanos": 0, "held_nanos": 0} for ev in events
    ])


async def _api_keys_created(conn: Executor, events: list[billing_pb2.ApiKeyCreated]) -> None:
    if not events:
        return
    await _execute(conn, _INSERT_KEY, [
        {
            "key_id": ev.key_id, "account_id": ev.account_id, "key_hash": ev.key_hash, "prefix": ev.prefix,
            "label": ev.label, "has_limit": ev.has_limit, "limit_nanos": ev.limit_nanos, "usage_nanos": 0,
            "held_nanos": 0, "allowed_models": json.dumps(sorted(ev.allowed_models)), "team": ev.team,
            "project": ev.project, "rate_limit_rpm": ev.rate_limit_rpm, "created_at_unix_ms": ev.created_at_unix_ms,
            "account_admin": ev.account_admin, "expires_at_unix_ms": ev.expires_at_unix_ms or None,
            "revoked_at_unix_ms": None, "previous_key_hash": None, "previous_prefix": None,
            "previous_valid_until_unix_ms": None, "revision": 0, "updated_at_unix_ms": None,
        }
        for ev in events
    ])


def _credits_added(events: list[billing_pb2.CreditsAdded], moves: _Moves) -> None:
    for ev in events:
        moves.wallet(ev.account_id, balance=ev.amount_nanos)
        moves.ledger(ev.account_id, ev.transaction)


def _hold_row(hold_id: str, account_id: str, key_id: str, model: str, amount: int, status: HoldStatus,
              created: int, expires: int, *, captured: int = 0, closed: int | None = None,
              usage_event_id: str = "", budget_ids: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "hold_id": hold_id, "account_id": account_id, "key_id": key_id, "model": model, "amount_nanos": amount,
        "status": status.value, "captured_nanos": captured, "released_nanos": 0, "refunded_nanos": 0,
        "rated_nanos": captured if status != HoldStatus.OPEN else None, "usage_event_id": usage_event_id,
        "needs_reconciliation": False, "created_at_unix_ms": created, "expires_at_unix_ms": expires,
        "closed_at_unix_ms": closed, "budget_ids": ",".join(budget_ids),
    }


async def _holds_placed(conn: Executor, events: list[billing_pb2.HoldPlaced], moves: _Moves, strict: bool) -> None:
    if not events:
        return
    # The insert comes first: a repeated request id fails here on the primary key, before any money moves.
    await _execute(conn, _INSERT_HOLD, [
        _hold_row(ev.hold_id, ev.account_id, ev.key_id, ev.model, ev.amount_nanos, HoldStatus.OPEN,
                  ev.created_at_unix_ms, ev.expires_at_unix_ms, budget_ids=ev.budget_ids)
        for ev in events
    ])
    for ev in events:
        if not strict:  # replay: the decision was made live; apply it as recorded
            moves.wallet(ev.account_id, held=ev.amount_nanos)
            moves.key(ev.key_id, held=ev.amount_nanos)
            continue
        result = await conn.execute(_RESERVE_WALLET, {"p_account": ev.account_id, "p_amount": ev.amount_nanos})
        if int(result.rowcount) != 1:  # type: ignore[attr-defined]
            raise InsufficientBalance("the account's available balance does not cover this request's maximum cost")
        result = await conn.execute(_RESERVE_KEY, {"p_key": ev.key_id, "p_amount": ev.amount_nanos})
        if int(result.rowcount) != 1:  # type: ignore[attr-defined]
            raise KeyLimitExceeded("the API key's spend limit does not cover this request's maximum cost")


async def _holds_captured(
    conn: Executor, events: list[billing_pb2.HoldCaptured], moves: _Moves, strict: bool,
    known: Mapping[str, str] | None,
) -> None:
    if not events:
        return
    status = await _hold_statuses(conn, (ev.hold_id for ev in events), known)
    closing: list[tuple[Any, ...]] = []
    unheld: list[dict[str, Any]] = []
    for ev in events:
        current = status.get(ev.hold_id)
        if current == HoldStatus.OPEN.value:
            closing.append((ev.hold_id, HoldStatus.CAPTURED.value, ev.captured_nanos, ev.released_nanos,
                            ev.captured_nanos, ev.usage_event_id, ev.captured_at_unix_ms))
            held = -ev.hold_amount_nanos
        elif current is None and ev.hold_amount_nanos == 0:
            # Usage with no hold: recorded as a closed zero hold, so a second usage event for it is not charged.
            unheld.append(_hold_row(ev.hold_id, ev.account_id, ev.key_id, "", 0, HoldStatus.CAPTURED,
                                    ev.captured_at_unix_ms, ev.captured_at_unix_ms, captured=ev.captured_nanos,
                                    closed=ev.captured_at_unix_ms, usage_event_id=ev.usage_event_id))
            held = 0
        else:
            raise _unfit(strict, f"hold {ev.hold_id} is {current or 'missing'}, not open: cannot capture it")
        status[ev.hold_id] = HoldStatus.CAPTURED.value
        moves.wallet(ev.account_id, balance=-ev.captured_nanos, held=held)
        moves.key(ev.key_id, usage=ev.captured_nanos, held=held)
        if ev.HasField("transaction"):
            moves.ledger(ev.account_id, ev.transaction)
    if closing:
        await update_rows(conn, holds, "hold_id", _CAPTURE_COLUMNS, closing, where=_STILL_OPEN)
    if unheld:
        await _execute(conn, _INSERT_HOLD, unheld)


async def _holds_expired(conn: Executor, events: list[billing_pb2.HoldExpired], moves: _Moves, strict: bool) -> None:
    if not events:
        return
    status = await _hold_statuses(conn, (ev.hold_id for ev in events))
    rows: list[dict[str, Any]] = []
    for ev in events:
        current = status.get(ev.hold_id)
        if current != HoldStatus.OPEN.value:
            raise _unfit(strict, f"hold {ev.hold_id} is {current or 'missing'}, not open: cannot expire it")
        status[ev.hold_id] = HoldStatus.EXPIRED.value
        rows.append({"p_hold": ev.hold_id, "p_amount": ev.amount_nanos, "p_at": ev.expired_at_unix_ms})
        moves.wallet(ev.account_id, balance=-ev.amount_nanos, held=-ev.amount_nanos)
        moves.key(ev.key_id, usage=ev.amount_nanos, held=-ev.amount_nanos)
        if ev.HasField("transaction"):
            moves.ledger(ev.account_id, ev.transaction)
    await _execute(conn, _EXPIRE_HOLD, rows)


async def _holds_reconciled(
    conn: Executor, events: list[billing_pb2.HoldReconciled], moves: _Moves, strict: bool
) -> None:
    if not events:
        return
    status = await _hold_statuses(conn, (ev.hold_id for ev in events))
    rows: list[dict[str, Any]] = []
    for ev in events:
        current = status.get(ev.hold_id)
        if current != HoldStatus.EXPIRED.value:
            raise _unfit(strict, f"hold {ev.hold_id} is {current or 'missing'}, not expired: cannot reconcile it")
        status[ev.hold_id] = HoldStatus.RECONCILED.value
        rows.append({"p_hold": ev.hold_id, "p_refunded": ev.refunded_nanos, "p_rated": ev.rated_nanos,
                     "p_usage_event": ev.usage_event_id})
        moves.wallet(ev.account_id, balance=ev.refunded_nanos)
        moves.key(ev.key_id, usage=-ev.refunded_nanos)
        if ev.HasField("transaction"):
            moves.ledger(ev.account_id, ev.transaction)
    await _execute(conn, _RECONCILE_HOLD, rows)
