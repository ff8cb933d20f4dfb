"""Refunds, credit notes and the promotional-credit sweeper: commands over :mod:`~tollgate_billing.credits`.

The same shape as every billing command: read (locked), decide (credits.py), ``repository.record`` in one write
transaction on billing's write queue. Refunds and credit notes are idempotent on their client-supplied id: the same
id with the same body returns the first result (``replayed``), with another body it is ``idempotency_key_reused``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from . import credit_store, repository
from .application import Billing
from .credits import charge_refunded, credit_note_issued, promo_expired, promo_remaining
from .errors import AccountNotFound, ChargeNotFound, ConcurrentUpdate, IdempotencyKeyReused, InvalidPeriod
from .projections import Executor
from .statements import parse_period, period_of

__all__ = ["AdjustmentResult", "CreditAdmin"]

log = logging.getLogger(__name__)

SWEEP_BATCH = 100


@dataclass(frozen=True, slots=True)
class AdjustmentResult:
    """A refund or credit note as recorded (the first one, on a replay)."""

    adjustment_id: str
    transaction_id: str
    amount_nanos: int
    balance_nanos: int
    replayed: bool
    created_at_unix_ms: int


class CreditAdmin:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def _replay(self, conn: Executor, account_id: str, kind: str, adjustment_id: str, reference: str,
                      amount_nanos: int, reason: str) -> AdjustmentResult | None:
        """The earlier adjustment with this id, if any (the same body: a replay; another: refused)."""
        earlier = await credit_store.adjustment(conn, account_id, kind, adjustment_id)
        if earlier is None:
            return None
        if (earlier.reference, earlier.amount_nanos, earlier.reason) != (reference, amount_nanos, reason.strip()):
            raise IdempotencyKeyReused(f"{kind} id {adjustment_id!r} was used with another request, amount or "
                                       "reason: use a new id for another one")
        wallet = await repository.get_wallet(conn, account_id)
        return AdjustmentResult(adjustment_id, earlier.transaction_id, earlier.amount_nanos,
                                wallet.balance_nanos if wallet else 0, True, earlier.created_at_unix_ms)

    async def refund_charge(self, account_id: str, refund_id: str, request_id: str, amount_nanos: int,
                            reason: str) -> AdjustmentResult:
        """Give back (part of) what ``request_id`` was charged: at most its charge less earlier refunds."""
        now = self.billing._now_ms()
        try:
            async with self.billing._write() as conn:
                wallet = await repository.get_wallet(conn, account_id, lock=True)
                if wallet is None:
                    raise AccountNotFound(f"account {account_id} not found")
                replay = await self._replay(conn, account_id, "refund", refund_id, request_id, amount_nanos, reason)
                if replay is not None:
                    return replay
                charge = await credit_store.charged(conn, account_id, request_id)
                if not charge:
                    raise ChargeNotFound(f"no charge for request {request_id!r} in account {account_id}")
                before = await credit_store.refunded(conn, account_id, request_id)
                event = charge_refunded(account_id, refund_id, request_id, amount_nanos, reason, charge, before, now)
                await repository.record(conn, event)
        except IntegrityError:  # a concurrent twin with the same id committed first
            async with self.billing._read() as conn:
                replay = await self._replay(conn, account_id, "refund", refund_id, request_id, amount_nanos, reason)
            if replay is None:
                raise ConcurrentUpdate("refund could not be applied; retry") from None
            return replay
        self.billing._committed()
        log.info("charge refunded", extra={"account_id": account_id, "request_id": request_id,
                                           "amount_nanos": event.amount_nanos})
        return AdjustmentResult(refund_id, event.transaction.transaction_id, event.amount_nanos,
                                wallet.balance_nanos + event.amount_nanos, False, now)

    async def issue_credit_note(self, account_id: str, credit_note_id: str, period: str, amount_nanos: int,
                                reason: str) -> AdjustmentResult:
        """A goodwill credit against ``period`` (YYYY-MM, not after the current month in the account's zone)."""
        now = self.billing._now_ms()
        parse_period(period)
        try:
            async with self.billing._write() as conn:
                account = await repository.get_account(conn, account_id)
                wallet = await repository.get_wallet(conn, account_id, lock=True)
                if account is None or wallet is None:
                    raise AccountNotFound(f"account {account_id} not found")
                if period > period_of(now, account.time_zone):
                    raise InvalidPeriod(f"period {period} has not begun")
                replay = await self._replay(conn, account_id, "credit_note", credit_note_id, period, amount_nanos,
                                            reason)
                if replay is not None:
                    return replay
                event = credit_note_issued(account_id, credit_note_id, period, amount_nanos, reason, now)
                await repository.record(conn, event)
        except IntegrityError:
            async with self.billing._read() as conn:
                replay = await self._replay(conn, account_id, "credit_note", credit_note_id, period, amount_nanos,
                                            reason)
            if replay is None:
                raise ConcurrentUpdate("credit note could not be applied; retry") from None
            return replay
        self.billing._committed()
        log.info("credit note issued", extra={"account_id": account_id, "period": period,
                                              "amount_nanos": event.amount_nanos})
        return AdjustmentResult(credit_note_id, event.transaction.transaction_id, event.amount_nanos,
                                wallet.balance_nanos + event.amount_nanos, False, now)

    async def expire_due_promotions(self, now_unix_ms: int | None = None) -> int:
        """Take what is left of every promotional credit past its expiry out of its wallet (once per grant)."""
        now = self.billing._now_ms() if now_unix_ms is None else now_unix_ms
        expired = 0
        while True:
            async with self.billing._read() as conn:
                due = await credit_store.due_grants(conn, now, SWEEP_BATCH)
            for grant in due:
                try:
                    async with self.billing._write() as conn:
                        wallet = await repository.get_wallet(conn, grant.account_id, lock=True)
                        if wallet is None:
                            continue
                        left = promo_remaining(await credit_store.wallet_postings(conn, grant.account_id),
                                               await credit_store.promo_expiries(conn, grant.account_id))
                        event = promo_expired(grant.account_id, grant.transaction_id, grant.amount_nanos,
                                              left.get(grant.transaction_id, 0), wallet.available_nanos, now)
                        await repository.record(conn, event)
                except ConcurrentUpdate:
                    continue  # another sweeper expired it first
                expired += 1
                log.info("promotional credit expired", extra={"account_id": grant.account_id,
                                                              "grant": grant.transaction_id,
                                                              "expired_nanos": event.expired_nanos})
            if expired:
                self.billing._committed()
            if len(due) < SWEEP_BATCH:
                return expired
