"""The account's "balance below X" alert (the admin API's ``/admin/v1/accounts/{id}/balance_alert``).

Same shape as budget_admin.py: read, decide, ``repository.record`` in one write transaction. Setting the threshold
(a ``BalanceAlertSet`` event, revisioned) takes the wallet row locked, then looks at the balance at once: a balance
already below the new threshold is a BalanceLow now, a low balance at or above it (or a threshold of 0, off) is a
BalanceRestored, so the alert's state always agrees with its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from tollgate.events.v1 import billing_pb2

from . import repository
from .application import Billing
from .domain import INT64_MAX
from .errors import AccountNotFound, InvalidArgument
from .projections import Executor
from .tables import wallets

__all__ = ["AlertAdmin", "BalanceAlertRecord"]


@dataclass(frozen=True, slots=True)
class BalanceAlertRecord:
    account_id: str
    currency: str
    #: 0 = off.
    threshold_nanos: int
    revision: int
    #: Between a BalanceLow and the BalanceRestored that re-arms it.
    low: bool
    last_low_at_unix_ms: int | None
    updated_at_unix_ms: int | None


class AlertAdmin:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def get_balance_alert(self, account_id: str) -> BalanceAlertRecord:
        async with self.billing._read() as conn:
            return await _balance_alert(conn, account_id)

    async def set_balance_alert(self, account_id: str, threshold_nanos: int) -> BalanceAlertRecord:
        if not 0 <= threshold_nanos <= INT64_MAX:
            raise InvalidArgument("threshold must be between 0 and 9223372036.854775807")
        now = self.billing._now_ms()
        async with self.billing._write() as conn:
            current = await _balance_alert(conn, account_id, lock=True)
            if current.threshold_nanos == threshold_nanos:
                return current
            await repository.record(conn, billing_pb2.BalanceAlertSet(
                account_id=account_id, revision=current.revision + 1, threshold_nanos=threshold_nanos,
                set_at_unix_ms=now))
            await repository.record_alerts(conn, [account_id], now)
            updated = await _balance_alert(conn, account_id)
        self.billing._committed()
        return updated


_ALERT = select(wallets.c.account_id, wallets.c.currency, wallets.c.low_balance_nanos, wallets.c.low_balance_revision,
                wallets.c.low_balance_low, wallets.c.low_balance_at_unix_ms, wallets.c.low_balance_updated_at_unix_ms)


async def _balance_alert(conn: Executor, account_id: str, *, lock: bool = False) -> BalanceAlertRecord:
    query = _ALERT.where(wallets.c.account_id == account_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise AccountNotFound(f"account {account_id} not found")
    return BalanceAlertRecord(row.account_id, row.currency, row.low_balance_nanos, row.low_balance_revision,
                              bool(row.low_balance_low), row.low_balance_at_unix_ms,
                              row.low_balance_updated_at_unix_ms)
