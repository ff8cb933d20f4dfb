"""Projections of budgets: their admin events, and what hold events do to them, live and in a rebuild.

Called by :func:`tollgate_billing.projections.apply_batch`: the admin events right after keys (a budget may name a
key created in the same batch), the money moves last, after the holds' own rows and the wallets and keys (the lock
order every writer follows: wallet, key, budget). What a hold event moves is decided by the ``budget_ids`` its
HoldPlaced recorded (stored on the hold row):

- placed: ``held += amount`` on each;
- captured / expired: ``held −= hold amount`` and ``spent += charged`` in the period of the capture (in the account's
  time zone): a budget whose stored period is older starts the new one at the charge; a charge of a period the
  budget has already left (a capture racing the boundary) is not counted in the new one;
- reconciled (a refund after an expiry): ``spent −= refund`` only while the budget is still in the expiry's period.

All of it derives from the events' own times and ids, so a replay computes the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, case, delete, insert, select, update
from tollgate.events.v1 import billing_pb2
from tollgate_common.bulk import select_rows

from .alerts import DEFAULT_THRESHOLDS, format_thresholds
from .budgets import PERIOD_NAMES, SCOPE_NAMES, period_bounds
from .errors import ConcurrentUpdate, InconsistentEvent
from .tables import accounts, budgets, holds

if TYPE_CHECKING:
    from .projections import Executor

__all__ = ["ADMIN_KINDS", "apply_admin", "apply_money", "split_ids"]

ADMIN_KINDS: tuple[type[Any], ...] = (billing_pb2.BudgetCreated, billing_pb2.BudgetUpdated,
                                      billing_pb2.BudgetDeleted)

_INSERT = insert(budgets)
_UPDATE = (
    update(budgets)
    .where(budgets.c.budget_id == bindparam("p_budget"), budgets.c.revision == bindparam("p_before"))
    .values(limit_nanos=bindparam("p_limit"), revision=bindparam("p_revision"), updated_at_unix_ms=bindparam("p_at"))
)
_UPDATE_WITH_THRESHOLDS = _UPDATE.values(alert_thresholds=bindparam("p_thresholds"))
_DELETE = delete(budgets).where(budgets.c.budget_id == bindparam("p_budget"))
_HOLD = (update(budgets).where(budgets.c.budget_id == bindparam("p_budget"))
         .values(held_nanos=budgets.c.held_nanos + bindparam("p_held")))
#: A charge in the period starting at p_start: added to that period's spend, or starting it.
_SPEND = (
    update(budgets)
    .where(budgets.c.budget_id == bindparam("p_budget"))
    .values(
        spent_nanos=case(
            (budgets.c.period_start_unix_ms == bindparam("p_start"), budgets.c.spent_nanos + bindparam("p_spent")),
            (budgets.c.period_start_unix_ms < bindparam("p_start"), bindparam("p_spent")),
            else_=budgets.c.spent_nanos,
        ),
        period_start_unix_ms=case(
            (budgets.c.period_start_unix_ms < bindparam("p_start"), bindparam("p_start")),
            else_=budgets.c.period_start_unix_ms,
        ),
    )
)
_REFUND = (
    update(budgets)
    .where(budgets.c.budget_id == bindparam("p_budget"), budgets.c.period_start_unix_ms == bindparam("p_start"))
    .values(spent_nanos=budgets.c.spent_nanos - bindparam("p_refund"))
)
_PERIODS = (
    select(budgets.c.budget_id, budgets.c.period, accounts.c.time_zone)
    .join(accounts, accounts.c.account_id == budgets.c.account_id)
    .where(budgets.c.budget_id.in_(bindparam("p_ids", expanding=True)))
)


def split_ids(stored: str) -> list[str]:
    return [i for i in stored.split(",") if i]


def _name(names: dict[Any, str], value: int, what: str) -> str:
    name = names.get(value)
    if name is None:
        raise InconsistentEvent(f"budget {what} {value} is not known")
    return name


async def apply_admin(conn: Executor, events: Sequence[Any], *, strict: bool) -> None:
    """Budget created / updated / deleted, in their order."""
    for ev in events:
        if isinstance(ev, billing_pb2.BudgetCreated):
            await conn.execute(_INSERT, {
                "budget_id": ev.budget_id, "account_id": ev.account_id, "scope": _name(SCOPE_NAMES, ev.scope, "scope"),
                "scope_id": ev.scope_id, "period": _name(PERIOD_NAMES, ev.period, "period"),
                "limit_nanos": ev.limit_nanos, "spent_nanos": 0, "held_nanos": 0, "period_start_unix_ms": 0,
                "created_at_unix_ms": ev.created_at_unix_ms, "updated_at_unix_ms": None, "revision": 0,
                "alert_thresholds": format_thresholds(ev.alert_thresholds.percents
                                                      if ev.HasField("alert_thresholds") else DEFAULT_THRESHOLDS),
            })
            continue
        if isinstance(ev, billing_pb2.BudgetUpdated):
            params = {"p_budget": ev.budget_id, "p_before": ev.revision - 1, "p_limit": ev.limit_nanos,
                      "p_revision": ev.revision, "p_at": ev.updated_at_unix_ms}
            if ev.HasField("alert_thresholds"):
                params["p_thresholds"] = format_thresholds(ev.alert_thresholds.percents)
                result = await conn.execute(_UPDATE_WITH_THRESHOLDS, params)
            else:
                result = await conn.execute(_UPDATE, params)
            what = f"budget {ev.budget_id} is not at revision {ev.revision - 1}: cannot update it"
        else:
            result = await conn.execute(_DELETE, {"p_budget": ev.budget_id})
            what = f"budget {ev.budget_id} does not exist: cannot delete it"
        if int(result.rowcount) != 1:  # type: ignore[attr-defined]
            raise ConcurrentUpdate(what) if strict else InconsistentEvent(what)


async def apply_money(conn: Executor, placed: Iterable[billing_pb2.HoldPlaced],
                      captured: Iterable[billing_pb2.HoldCaptured], expired: Iterable[billing_pb2.HoldExpired],
                      reconciled: Iterable[billing_pb2.HoldReconciled]) -> None:
    """Move the budgets of a batch's hold events (after the holds' rows are written)."""
    held: dict[str, int] = {}
    for ev in placed:
        for budget_id in ev.budget_ids:
            held[budget_id] = held.get(budget_id, 0) + ev.amount_nanos
    closing: list[tuple[str, int, int, int]] = []  # hold id, held released, spent, at
    refunds: list[tuple[str, int]] = []  # hold id, refund
    closing.extend((ev.hold_id, ev.hold_amount_nanos, ev.captured_nanos, ev.captured_at_unix_ms) for ev in captured)
    closing.extend((ev.hold_id, ev.amount_nanos, ev.amount_nanos, ev.expired_at_unix_ms) for ev in expired)
    refunds.extend((ev.hold_id, ev.refunded_nanos) for ev in reconciled if ev.refunded_nanos)
    hold_ids = sorted({c[0] for c in closing} | {r[0] for r in refunds})
    stored: dict[str, tuple[list[str], int]] = {}
    if hold_ids:
        rows = await select_rows(conn, holds, "hold_id", ("hold_id", "budget_ids", "closed_at_unix_ms"), hold_ids)
        stored = {row[0]: (split_ids(row[1]), row[2] or 0) for row in rows if row[1]}
    spends: list[tuple[str, int, int]] = []  # budget, at, amount
    for hold_id, release, spent, at in closing:
        for budget_id in stored.get(hold_id, ([], 0))[0]:
            held[budget_id] = held.get(budget_id, 0) - release
            if spent:
                spends.append((budget_id, at, spent))
    refunded = [(budget_id, stored[hold_id][1], refund) for hold_id, refund in refunds if hold_id in stored
                for budget_id in stored[hold_id][0]]
    if not held and not spends and not refunded:
        return
    periods = await _periods(conn, {b for b, _, _ in spends} | {b for b, _, _ in refunded})
    held_rows = [{"p_budget": b, "p_held": h} for b, h in sorted(held.items()) if h]
    if held_rows:
        await conn.execute(_HOLD, held_rows[0] if len(held_rows) == 1 else held_rows)
    by_period: dict[tuple[str, int], int] = {}
    for budget_id, at, amount in spends:
        if budget_id in periods:  # a budget deleted since: nothing to count
            start = period_bounds(*periods[budget_id], at)[0]
            by_period[(budget_id, start)] = by_period.get((budget_id, start), 0) + amount
    spend_rows = [{"p_budget": b, "p_start": s, "p_spent": a} for (b, s), a in sorted(by_period.items())]
    if spend_rows:
        await conn.execute(_SPEND, spend_rows[0] if len(spend_rows) == 1 else spend_rows)
    refund_rows = [{"p_budget": b, "p_start": period_bounds(*periods[b], at)[0], "p_refund": r}
                   for b, at, r in refunded if b in periods]
    if refund_rows:
        await conn.execute(_REFUND, refund_rows[0] if len(refund_rows) == 1 else refund_rows)


async def _periods(conn: Executor, budget_ids: set[str]) -> dict[str, tuple[str, str]]:
    """budget id → (period, the account's time zone), for the budgets that still exist."""
    if not budget_ids:
        return {}
    rows = await conn.execute(_PERIODS, {"p_ids": sorted(budget_ids)})
    return {row.budget_id: (row.period, row.time_zone) for row in rows}

