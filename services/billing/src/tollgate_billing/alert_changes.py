"""Alert events: how they change the tables (live and in a rebuild), and where billing looks for new crossings.

Projection: :func:`apply` takes the batch's alert events in their log order (a BalanceLow and the BalanceRestored
that ends it must not be reordered) and only writes what the events say, so a replay writes the same rows:

- ``BudgetThresholdCrossed``: the budget's last crossed percent, time, period start and revision;
- ``BalanceAlertSet``: the wallet's threshold and its revision (guarded live: concurrent settings conflict);
- ``BalanceLow`` / ``BalanceRestored``: the wallet's ``low`` flag, sequence and time.

Detection: :func:`new_alerts` runs inside the transaction of a change that moved money or limits, after that
change was applied: it reads the accounts' wallets and budgets (locked, in the lock order every writer takes:
wallets, then budgets) and returns the alert events the rows now call for (alerts.py decides). The caller records
them in the same transaction, so the alert commits with the change that caused it or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy import bindparam, select, update
from tollgate.events.v1 import billing_pb2

from .alerts import balance_change, crossed, parse_thresholds
from .budgets import PERIODS, SCOPES, period_bounds
from .errors import ConcurrentUpdate, InconsistentEvent
from .tables import accounts, budgets, wallets

if TYPE_CHECKING:
    from .projections import Executor

__all__ = ["KINDS", "apply", "new_alerts"]

KINDS: tuple[type[Message], ...] = (billing_pb2.BudgetThresholdCrossed, billing_pb2.BalanceAlertSet,
                                    billing_pb2.BalanceLow, billing_pb2.BalanceRestored)

_CROSSED = (
    update(budgets).where(budgets.c.budget_id == bindparam("p_budget"))
    .values(last_crossed_percent=bindparam("p_percent"), last_crossed_at_unix_ms=bindparam("p_at"),
            last_crossed_period_start_unix_ms=bindparam("p_start"), last_crossed_revision=bindparam("p_revision"))
)
_SET = (
    update(wallets)
    .where(wallets.c.account_id == bindparam("p_account"), wallets.c.low_balance_revision == bindparam("p_before"))
    .values(low_balance_nanos=bindparam("p_threshold"), low_balance_revision=bindparam("p_revision"),
            low_balance_updated_at_unix_ms=bindparam("p_at"))
)
_LOW = (
    update(wallets).where(wallets.c.account_id == bindparam("p_account"))
    .values(low_balance_low=True, low_balance_sequence=bindparam("p_sequence"),
            low_balance_at_unix_ms=bindparam("p_at"))
)
_RESTORED = update(wallets).where(wallets.c.account_id == bindparam("p_account")).values(low_balance_low=False)

_WALLETS = (
    select(wallets.c.account_id, wallets.c.currency, wallets.c.balance_nanos, wallets.c.low_balance_nanos,
           wallets.c.low_balance_low, wallets.c.low_balance_sequence)
    .where(wallets.c.account_id.in_(bindparam("p_ids", expanding=True)),
           (wallets.c.low_balance_nanos > 0) | wallets.c.low_balance_low)
    .order_by(wallets.c.account_id)
    .with_for_update()
)
_BUDGETS = (
    select(budgets.c.budget_id, budgets.c.account_id, budgets.c.scope, budgets.c.scope_id, budgets.c.period,
           budgets.c.limit_nanos, budgets.c.spent_nanos, budgets.c.period_start_unix_ms, budgets.c.revision,
           budgets.c.alert_thresholds, budgets.c.last_crossed_percent, budgets.c.last_crossed_period_start_unix_ms,
           budgets.c.last_crossed_revision, accounts.c.time_zone)
    .join(accounts, accounts.c.account_id == budgets.c.account_id)
    .where(budgets.c.account_id.in_(bindparam("p_ids", expanding=True)), budgets.c.alert_thresholds != "",
           budgets.c.spent_nanos > 0)
    .order_by(budgets.c.budget_id)
    .with_for_update(of=budgets)
)


async def apply(conn: Executor, events: Sequence[Any], *, strict: bool) -> None:
    """The batch's alert events, in their log order."""
    for ev in events:
        if isinstance(ev, billing_pb2.BudgetThresholdCrossed):
            # A budget deleted since has no row: nothing to remember.
            await conn.execute(_CROSSED, {"p_budget": ev.budget_id, "p_percent": ev.threshold_percent,
                                          "p_at": ev.crossed_at_unix_ms, "p_start": ev.period_start_unix_ms,
                                          "p_revision": ev.budget_revision})
        elif isinstance(ev, billing_pb2.BalanceAlertSet):
            result = await conn.execute(_SET, {"p_account": ev.account_id, "p_before": ev.revision - 1,
                                               "p_threshold": ev.threshold_nanos, "p_revision": ev.revision,
                                               "p_at": ev.set_at_unix_ms})
            if int(result.rowcount) != 1:  # type: ignore[attr-defined]
                what = f"the balance alert of {ev.account_id} is not at revision {ev.revision - 1}: cannot set it"
                raise ConcurrentUpdate(what) if strict else InconsistentEvent(what)
        elif isinstance(ev, billing_pb2.BalanceLow):
            await conn.execute(_LOW, {"p_account": ev.account_id, "p_sequence": ev.sequence,
                                      "p_at": ev.crossed_at_unix_ms})
        else:
            await conn.execute(_RESTORED, {"p_account": ev.account_id})


async def new_alerts(conn: Executor, account_ids: Iterable[str], now_unix_ms: int, *,
                     budget_id: str | None = None) -> list[Message]:
    """The alert events the accounts' rows call for now (after the change the caller just applied).

    ``budget_id``: look at that budget only, not at the wallet: a budget change has locked that budget row but not
    its wallet, and must neither lock the wallet after it nor other budgets (the lock order is wallet, then the
    budgets in id order)."""
    ids = sorted(set(account_ids))
    if not ids:
        return []
    events: list[Message] = []
    if budget_id is None:
        for wallet in await conn.execute(_WALLETS, {"p_ids": ids}):
            change = balance_change(account_id=wallet.account_id, balance_nanos=wallet.balance_nanos,
                                    threshold_nanos=wallet.low_balance_nanos, low=bool(wallet.low_balance_low),
                                    sequence=wallet.low_balance_sequence, currency=wallet.currency,
                                    at_unix_ms=now_unix_ms)
            if change is not None:
                events.append(change)
    starts: dict[tuple[str, str], int] = {}
    query = _BUDGETS if budget_id is None else _BUDGETS.where(budgets.c.budget_id == budget_id)
    for row in await conn.execute(query, {"p_ids": ids}):
        zone = (row.period, row.time_zone)
        if zone not in starts:
            starts[zone] = period_bounds(row.period, row.time_zone, now_unix_ms)[0]
        if row.period_start_unix_ms < starts[zone]:  # the stored spend is of a past period: nothing is spent now
            continue
        same = (row.last_crossed_period_start_unix_ms == row.period_start_unix_ms
                and row.last_crossed_revision == row.revision)
        for percent in crossed(parse_thresholds(row.alert_thresholds), spent_nanos=row.spent_nanos,
                               limit_nanos=row.limit_nanos, armed_above=row.last_crossed_percent if same else 0):
            events.append(billing_pb2.BudgetThresholdCrossed(
                budget_id=row.budget_id, account_id=row.account_id, scope=SCOPES[row.scope],  # type: ignore[arg-type]
                scope_id=row.scope_id, period=PERIODS[row.period],  # type: ignore[arg-type]
                period_start_unix_ms=row.period_start_unix_ms, budget_revision=row.revision,
                threshold_percent=percent, limit_nanos=row.limit_nanos, spent_nanos=row.spent_nanos,
                crossed_at_unix_ms=now_unix_ms))
    return events
