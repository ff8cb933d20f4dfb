"""Projections of promotional credits, their expiry, refunds, credit notes and closed statements.

Called by :func:`tollgate_billing.projections.apply_batch` (the one place billing state is written), live and in
a rebuild alike: the grant row of a promotional ``CreditsAdded`` right after the credit itself; the money events
(``PromoCreditExpired``, ``ChargeRefunded``, ``CreditNoteIssued``) after the holds, through the batch's money
moves; ``StatementClosed`` last. Live (``strict``), an expiry applies only to a grant not expired yet, so a grant
expires exactly once however many sweepers race.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, insert, update
from tollgate.events.v1 import billing_pb2

from .errors import ConcurrentUpdate, InconsistentEvent
from .tables import adjustments, promo_grants, statements

if TYPE_CHECKING:
    from .projections import Executor

__all__ = ["MONEY_KINDS", "apply_grants", "apply_money", "apply_statements"]

MONEY_KINDS: tuple[type[Any], ...] = (billing_pb2.PromoCreditExpired, billing_pb2.ChargeRefunded,
                                      billing_pb2.CreditNoteIssued)

_INSERT_GRANT = insert(promo_grants)
_INSERT_ADJUSTMENT = insert(adjustments)
_INSERT_STATEMENT = insert(statements)
_EXPIRE_GRANT = (
    update(promo_grants)
    .where(promo_grants.c.transaction_id == bindparam("p_grant"), promo_grants.c.expired_at_unix_ms.is_(None))
    .values(expired_at_unix_ms=bindparam("p_at"), expired_nanos=bindparam("p_nanos"))
)


class Moves(Protocol):
    """The batch's money moves (projections._Moves)."""

    def wallet(self, account_id: str, *, balance: int = 0, held: int = 0) -> None: ...

    def ledger(self, account_id: str, txn: billing_pb2.LedgerTransaction) -> None: ...


async def apply_grants(conn: Executor, events: Sequence[billing_pb2.CreditsAdded]) -> None:
    rows = [{"transaction_id": ev.transaction.transaction_id, "account_id": ev.account_id,
             "amount_nanos": ev.amount_nanos, "granted_at_unix_ms": ev.transaction.created_at_unix_ms,
             "expires_at_unix_ms": ev.expires_at_unix_ms, "expired_at_unix_ms": None, "expired_nanos": None}
            for ev in events if ev.credit_kind == "promotional"]
    if rows:
        await conn.execute(_INSERT_GRANT, rows)


async def apply_money(conn: Executor, events: Sequence[Any], moves: Moves, *, strict: bool) -> None:
    """The expiries, refunds and credit notes of a batch, in their order."""
    for ev in events:
        if isinstance(ev, billing_pb2.PromoCreditExpired):
            result = await conn.execute(_EXPIRE_GRANT, {"p_grant": ev.grant_transaction_id,
                                                        "p_at": ev.expired_at_unix_ms, "p_nanos": ev.expired_nanos})
            if int(result.rowcount) != 1:  # type: ignore[attr-defined]
                message = f"promotional credit {ev.grant_transaction_id} is missing or expired already"
                raise ConcurrentUpdate(message) if strict else InconsistentEvent(message)
            amount = -ev.expired_nanos
        else:
            is_refund = isinstance(ev, billing_pb2.ChargeRefunded)
            await conn.execute(_INSERT_ADJUSTMENT, {
                "account_id": ev.account_id, "kind": "refund" if is_refund else "credit_note",
                "adjustment_id": ev.refund_id if is_refund else ev.credit_note_id,
                "reference": ev.request_id if is_refund else ev.period, "amount_nanos": ev.amount_nanos,
                "reason": ev.reason, "transaction_id": ev.transaction.transaction_id,
                "created_at_unix_ms": ev.transaction.created_at_unix_ms,
            })
            amount = ev.amount_nanos
        moves.wallet(ev.account_id, balance=amount)
        if ev.HasField("transaction"):
            moves.ledger(ev.account_id, ev.transaction)


async def apply_statements(conn: Executor, events: Sequence[billing_pb2.StatementClosed]) -> None:
    if not events:
        return
    await conn.execute(_INSERT_STATEMENT, [
        {"account_id": ev.account_id, "period": ev.period, "events_sha256": ev.statement.events_sha256,
         "event_count": ev.statement.event_count, "closing_balance_nanos": ev.statement.closing_balance_nanos,
         "document": ev.statement.SerializeToString(deterministic=True)}
        for ev in events
    ])
