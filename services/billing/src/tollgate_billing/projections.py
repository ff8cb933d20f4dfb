"""Projections: how each billing event changes the tables. The ONE place billing state is written.

The live path and the rebuild call the same functions, so a database replayed from ``tollgate.billing.v1`` holds
what the live one holds. ``strict=True`` (live) adds the guards that make a decision atomic — a hold is placed only
if ``balance − held ≥ amount`` (and, for a key with a limit, ``limit − usage − held ≥ amount``) in the same UPDATE,
and a hold is closed only while it is still open — and raises the caller-facing error when a guard fails. In a
replay (``strict=False``) an event is a fact already decided: it is applied as recorded, and an event that does
not fit the stored rows raises :class:`~tollgate_billing.errors.InconsistentEvent`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from google.protobuf.message import Message
from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from tollgate.events.v1 import billing_pb2

from .domain import HoldStatus
from .errors import ConcurrentUpdate, InconsistentEvent, InsufficientBalance, KeyLimitExceeded
from .tables import accounts, api_keys, credit_grants, holds, ledger_postings, ledger_transactions, wallets

__all__ = ["Executor", "apply"]

#: Projections run on a plain connection (the application) or inside the consumer's session.
Executor: TypeAlias = AsyncConnection | AsyncSession


async def apply(conn: Executor, event: Message, *, strict: bool = False) -> None:
    """Apply one billing event to the tables (inside the caller's transaction)."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise InconsistentEvent(f"{type(event).__name__} is not a billing event")
    await handler(conn, event, strict)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


# Statements are built once: Authorize runs them on every request, and building (and cache-keying) a fresh
# statement costs more CPU than executing it on SQLite.
_INSERT_TRANSACTION = insert(ledger_transactions)
_INSERT_POSTINGS = insert(ledger_postings)
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
_CLOSE_OPEN_HOLD = update(holds).where(
    holds.c.hold_id == bindparam("p_hold"), holds.c.status == HoldStatus.OPEN.value
)


async def _insert_transaction(conn: Executor, account_id: str, txn: billing_pb2.LedgerTransaction) -> None:
    if sum(p.amount_nanos for p in txn.postings) != 0 or not txn.postings:
        raise InconsistentEvent(f"ledger transaction {txn.transaction_id} does not sum to zero")
    await conn.execute(
        _INSERT_TRANSACTION,
        {
            "transaction_id": txn.transaction_id,
            "account_id": account_id,
            "kind": txn.kind,
            "reference": txn.reference,
            "created_at_unix_ms": txn.created_at_unix_ms,
        },
    )
    await conn.execute(
        _INSERT_POSTINGS,
        [
            {"transaction_id": txn.transaction_id, "ledger_account": p.ledger_account, "amount_nanos": p.amount_nanos}
            for p in txn.postings
        ],
    )


async def _move_wallet(conn: Executor, account_id: str, *, balance: int = 0, held: int = 0) -> None:
    result = await conn.execute(_MOVE_WALLET, {"p_account": account_id, "p_balance": balance, "p_held": held})
    if _rowcount(result) != 1:
        raise InconsistentEvent(f"no wallet for account {account_id}")


async def _move_key(conn: Executor, key_id: str, *, usage: int = 0, held: int = 0) -> None:
    """Key counters follow the money; a charge for a key billing does not know (unheld usage) has no key row."""
    if not key_id or (usage == 0 and held == 0):
        return
    await conn.execute(_MOVE_KEY, {"p_key": key_id, "p_usage": usage, "p_held": held})


# --- one function per event -------------------------------------------------------------------------------------


async def apply_account_created(conn: Executor, ev: billing_pb2.AccountCreated, strict: bool) -> None:
    await conn.execute(
        insert(accounts).values(
            account_id=ev.account_id, name=ev.name, currency=ev.currency, created_at_unix_ms=ev.created_at_unix_ms
        )
    )
    await conn.execute(
        insert(wallets).values(account_id=ev.account_id, currency=ev.currency, balance_nanos=0, held_nanos=0)
    )


async def apply_api_key_created(conn: Executor, ev: billing_pb2.ApiKeyCreated, strict: bool) -> None:
    await conn.execute(
        insert(api_keys).values(
            key_id=ev.key_id,
            account_id=ev.account_id,
            key_hash=ev.key_hash,
            prefix=ev.prefix,
            label=ev.label,
            has_limit=ev.has_limit,
            limit_nanos=ev.limit_nanos,
            usage_nanos=0,
            held_nanos=0,
            allowed_models=json.dumps(sorted(ev.allowed_models)),
            team=ev.team,
            project=ev.project,
            rate_limit_rpm=ev.rate_limit_rpm,
            created_at_unix_ms=ev.created_at_unix_ms,
        )
    )


async def apply_credits_added(conn: Executor, ev: billing_pb2.CreditsAdded, strict: bool) -> None:
    await conn.execute(
        insert(credit_grants).values(
            account_id=ev.account_id,
            idempotency_key=ev.idempotency_key,
            transaction_id=ev.transaction.transaction_id,
            amount_nanos=ev.amount_nanos,
        )
    )
    await _move_wallet(conn, ev.account_id, balance=ev.amount_nanos)
    await _insert_transaction(conn, ev.account_id, ev.transaction)


async def apply_hold_placed(conn: Executor, ev: billing_pb2.HoldPlaced, strict: bool) -> None:
    # The insert comes first: a repeated request id fails here on the primary key, before any money moves.
    await conn.execute(
        _INSERT_HOLD,
        {
            "hold_id": ev.hold_id,
            "account_id": ev.account_id,
            "key_id": ev.key_id,
            "model": ev.model,
            "amount_nanos": ev.amount_nanos,
            "status": HoldStatus.OPEN.value,
            "captured_nanos": 0,
            "released_nanos": 0,
            "refunded_nanos": 0,
            "rated_nanos": None,
            "usage_event_id": "",
            "needs_reconciliation": False,
            "created_at_unix_ms": ev.created_at_unix_ms,
            "expires_at_unix_ms": ev.expires_at_unix_ms,
            "closed_at_unix_ms": None,
        },
    )
    if not strict:  # replay: the decision was made live; apply it as recorded
        await _move_wallet(conn, ev.account_id, held=ev.amount_nanos)
        result = await conn.execute(_MOVE_KEY, {"p_key": ev.key_id, "p_usage": 0, "p_held": ev.amount_nanos})
        if _rowcount(result) != 1:
            raise InconsistentEvent(f"no API key {ev.key_id}")
        return
    result = await conn.execute(_RESERVE_WALLET, {"p_account": ev.account_id, "p_amount": ev.amount_nanos})
    if _rowcount(result) != 1:
        raise InsufficientBalance("the account's available balance does not cover this request's maximum cost")
    result = await conn.execute(_RESERVE_KEY, {"p_key": ev.key_id, "p_amount": ev.amount_nanos})
    if _rowcount(result) != 1:
        raise KeyLimitExceeded("the API key's spend limit does not cover this request's maximum cost")


async def _close_open_hold(conn: Executor, hold_id: str, strict: bool, **values: Any) -> bool:
    """Close a hold only while it is open; False when there is no such hold at all."""
    result = await conn.execute(_CLOSE_OPEN_HOLD.values(**values), {"p_hold": hold_id})
    if _rowcount(result) == 1:
        return True
    found = (await conn.execute(select(holds.c.status).where(holds.c.hold_id == hold_id))).first()
    if found is None:
        return False
    if strict:
        raise ConcurrentUpdate(f"hold {hold_id} is no longer open")
    raise InconsistentEvent(f"hold {hold_id} is {found.status}, not open")


async def apply_hold_captured(conn: Executor, ev: billing_pb2.HoldCaptured, strict: bool) -> None:
    closed = await _close_open_hold(
        conn,
        ev.hold_id,
        strict,
        status=HoldStatus.CAPTURED.value,
        captured_nanos=ev.captured_nanos,
        released_nanos=ev.released_nanos,
        rated_nanos=ev.captured_nanos,
        usage_event_id=ev.usage_event_id,
        closed_at_unix_ms=ev.captured_at_unix_ms,
    )
    if closed:
        held = -ev.hold_amount_nanos
    elif ev.hold_amount_nanos == 0:
        # Usage with no hold: record it as a closed zero hold, so a second usage event for it is not charged.
        held = 0
        await conn.execute(
            insert(holds).values(
                hold_id=ev.hold_id,
                account_id=ev.account_id,
                key_id=ev.key_id,
                model="",
                amount_nanos=0,
                status=HoldStatus.CAPTURED.value,
                captured_nanos=ev.captured_nanos,
                released_nanos=0,
                refunded_nanos=0,
                rated_nanos=ev.captured_nanos,
                usage_event_id=ev.usage_event_id,
                needs_reconciliation=False,
                created_at_unix_ms=ev.captured_at_unix_ms,
                expires_at_unix_ms=ev.captured_at_unix_ms,
                closed_at_unix_ms=ev.captured_at_unix_ms,
            )
        )
    else:
        raise InconsistentEvent(f"no hold {ev.hold_id} to capture")
    await _move_wallet(conn, ev.account_id, balance=-ev.captured_nanos, held=held)
    await _move_key(conn, ev.key_id, usage=ev.captured_nanos, held=held)
    if ev.HasField("transaction"):
        await _insert_transaction(conn, ev.account_id, ev.transaction)


async def apply_hold_expired(conn: Executor, ev: billing_pb2.HoldExpired, strict: bool) -> None:
    closed = await _close_open_hold(
        conn,
        ev.hold_id,
        strict,
        status=HoldStatus.EXPIRED.value,
        captured_nanos=ev.amount_nanos,
        released_nanos=0,
        needs_reconciliation=True,
        closed_at_unix_ms=ev.expired_at_unix_ms,
    )
    if not closed:
        raise InconsistentEvent(f"no hold {ev.hold_id} to expire")
    await _move_wallet(conn, ev.account_id, balance=-ev.amount_nanos, held=-ev.amount_nanos)
    await _move_key(conn, ev.key_id, usage=ev.amount_nanos, held=-ev.amount_nanos)
    if ev.HasField("transaction"):
        await _insert_transaction(conn, ev.account_id, ev.transaction)


async def apply_hold_reconciled(conn: Executor, ev: billing_pb2.HoldReconciled, strict: bool) -> None:
    result = await conn.execute(
        update(holds)
        .where(holds.c.hold_id == ev.hold_id, holds.c.status == HoldStatus.EXPIRED.value)
        .values(
            status=HoldStatus.RECONCILED.value,
            refunded_nanos=ev.refunded_nanos,
            rated_nanos=ev.rated_nanos,
            usage_event_id=ev.usage_event_id,
        )
    )
    if _rowcount(result) != 1:
        if strict:
            raise ConcurrentUpdate(f"hold {ev.hold_id} is no longer expired")
        raise InconsistentEvent(f"no expired hold {ev.hold_id} to reconcile")
    await _move_wallet(conn, ev.account_id, balance=ev.refunded_nanos)
    await _move_key(conn, ev.key_id, usage=-ev.refunded_nanos)
    if ev.HasField("transaction"):
        await _insert_transaction(conn, ev.account_id, ev.transaction)


_HANDLERS: dict[type[Message], Callable[[Executor, Any, bool], Awaitable[None]]] = {
    billing_pb2.AccountCreated: apply_account_created,
    billing_pb2.ApiKeyCreated: apply_api_key_created,
    billing_pb2.CreditsAdded: apply_credits_added,
    billing_pb2.HoldPlaced: apply_hold_placed,
    billing_pb2.HoldCaptured: apply_hold_captured,
    billing_pb2.HoldExpired: apply_hold_expired,
    billing_pb2.HoldReconciled: apply_hold_reconciled,
}
