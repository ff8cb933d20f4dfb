"""Monthly statements: build one (statements.py) from billing's log, and close it once its month is complete.

A month is **closed** once it has ended (plus ``SETTLE_SECONDS``, for a transaction decided just before midnight
and committed just after) and billing has applied the usage up to its end: the same "usage presumed complete"
check the hold sweeper makes (usage_lag.py's ``expiry_cutoff``). Then the statement is recorded as a
``StatementClosed`` event (stored in ``statements``, rebuilt from the log like every table) and served from there
forever after, byte for byte. Until then it is a **draft**, built afresh on each call and marked ``closed=false``.
"""

from __future__ import annotations

from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from tollgate.events.v1 import billing_pb2
from tollgate_common.events import EVENT_TYPES

from . import credit_store, repository
from .application import Billing
from .errors import AccountNotFound, InconsistentEvent, InvalidPeriod
from .projections import Executor
from .repository import AccountRow
from .statements import CoveredEvent, build_statement, event_id_for, period_bounds

__all__ = ["SETTLE_SECONDS", "StatementAdmin"]

SETTLE_SECONDS = 60


class StatementAdmin:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def statement(self, account_id: str, period: str) -> billing_pb2.Statement:
        """The account's statement for ``period`` (YYYY-MM in its time zone): the stored one once closed, else a
        draft; closing it here when the month has become complete."""
        now = self.billing._now_ms()
        async with self.billing._read() as conn:
            account = await repository.get_account(conn, account_id)
            if account is None:
                raise AccountNotFound(f"account {account_id} not found")
            start, end = period_bounds(period, account.time_zone)
            if start > now:
                raise InvalidPeriod(f"period {period} has not begun")
            stored = await credit_store.stored_statement(conn, account_id, period)
            if stored is not None:
                return billing_pb2.Statement.FromString(stored)
        closing = await self._complete(end, now)
        async with self.billing._read() as conn:
            statement = await self._build(conn, account, period, start, end, closed=closing, now=now)
        if not closing:
            return statement
        event = billing_pb2.StatementClosed(account_id=account_id, period=period, statement=statement)
        try:
            async with self.billing._write() as conn:
                await repository.record(conn, event)
        except IntegrityError:  # closed meanwhile by another call or replica: theirs is the statement
            async with self.billing._read() as conn:
                stored = await credit_store.stored_statement(conn, account_id, period)
            if stored is None:
                raise
            return billing_pb2.Statement.FromString(stored)
        self.billing._committed()
        return statement

    async def _complete(self, end: int, now: int) -> bool:
        if now < end + SETTLE_SECONDS * 1000:
            return False
        lag = self.billing.usage_lag
        return lag is None or await lag.expiry_cutoff(now) >= end

    async def _build(self, conn: Executor, account: AccountRow, period: str, start: int, end: int, *,
                     closed: bool, now: int) -> billing_pb2.Statement:
        account_id = account.account_id
        opening = await credit_store.opening_balance(conn, account_id, start)
        txns = await credit_store.month_transactions(conn, account_id, start, end)
        wanted = {event_id_for(kind, txn_id, reference) for txn_id, kind, reference in txns}
        found = await credit_store.log_events(conn, sorted(wanted))
        if len(found) != len(wanted):
            missing = sorted(wanted - {event_id for _, event_id, _ in found})
            raise InconsistentEvent(f"{len(missing)} event(s) of {period} are not in billing's log, e.g. "
                                    f"{missing[0]}: the statement cannot be made from it")
        events = [CoveredEvent(event_id, data, _message(event_id, data)) for _, event_id, data in found]
        hold_ids = [ev.message.hold_id for ev in events  # type: ignore[attr-defined]
                    if isinstance(ev.message, billing_pb2.HoldCaptured | billing_pb2.HoldExpired
                                  | billing_pb2.HoldReconciled)]
        models, projects = await credit_store.hold_details(conn, hold_ids)
        return build_statement(
            account_id=account_id, account_name=account.name, currency=account.currency,
            time_zone=account.time_zone, period=period, opening_balance_nanos=opening, events=events,
            hold_models=models, hold_projects=projects, closed=closed, generated_at_unix_ms=now,
        )


_BY_PREFIX: dict[str, type[Message]] = {
    name.removeprefix("tollgate.billing.v1.").replace("promo_credit.expired", "promo.expired"): cls
    for name, cls in EVENT_TYPES.items() if name.startswith("tollgate.billing.v1.")
}


def _message(event_id: str, data: bytes) -> Message:
    """Decode an event of the log: its kind is the prefix of its deterministic id (``hold.captured:…``)."""
    prefix = event_id.split(":", 1)[0]
    cls = _BY_PREFIX.get(prefix)
    if cls is None:
        raise InconsistentEvent(f"event {event_id} is of no known billing kind")
    return cls.FromString(data)
