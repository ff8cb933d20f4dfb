"""Budget commands and queries (the admin API's ``/admin/v1/accounts/{id}/budgets``).

The same shape as the group commands (group_admin.py): read, decide (budgets.py), ``repository.record`` in one
write transaction on billing's write queue. What a budget scopes must exist in the account (a key of it, an
existing team or project; archived groups may still get budgets: their keys keep spending). The period is fixed at
creation (to change it, delete the budget and create another); the limit may change, and takes effect at the
next Authorize on every replica (the decision reads the row).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from tollgate_common.ids import new_id

from . import repository
from .application import Billing
from .budgets import BudgetRecord, budget_created, budget_deleted, budget_updated, period_name, scope_name
from .errors import AccountNotFound, BudgetExists, BudgetNotFound, KeyNotFound
from .memberships import find_group
from .projections import Executor

__all__ = ["BudgetAdmin"]


class BudgetAdmin:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    def now_ms(self) -> int:
        return self.billing._now_ms()

    async def create_budget(self, account_id: str, scope: int, scope_id: str, period: int, limit_nanos: int,
                            alert_thresholds: Sequence[int] | None = None) -> BudgetRecord:
        """``alert_thresholds``: percentages of the limit that emit BudgetThresholdCrossed (None = 50, 80, 100)."""
        event = budget_created(new_id("bud"), account_id, scope, scope_id, period, limit_nanos, self.now_ms(),
                               alert_thresholds)
        label = scope_name(scope)
        try:
            async with self.billing._write() as conn:
                await _check_scope(conn, account_id, label, event.scope_id)
                await repository.record(conn, event)
        except IntegrityError:  # the unique (account, scope, scope id, period)
            raise BudgetExists(f"{label} {event.scope_id!r} already has a {period_name(period)} budget") from None
        self.billing._committed()
        return await self.get_budget(account_id, event.budget_id)

    async def get_budget(self, account_id: str, budget_id: str) -> BudgetRecord:
        async with self.billing._read() as conn:
            return await _budget(conn, account_id, budget_id)

    async def list_budgets(self, account_id: str) -> list[BudgetRecord]:
        async with self.billing._read() as conn:
            if await repository.get_account(conn, account_id) is None:
                raise AccountNotFound(f"account {account_id} not found")
            return await repository.budget_records(conn, account_id)

    async def update_budget(self, account_id: str, budget_id: str, limit_nanos: int | None,
                            alert_thresholds: Sequence[int] | None = None) -> BudgetRecord:
        """A new limit and/or thresholds (None = unchanged). The new revision re-arms every threshold, and a spend
        already at one of them (a lowered limit) is alerted at once."""
        async with self.billing._write() as conn:
            budget = await _budget(conn, account_id, budget_id)
            event = budget_updated(budget, limit_nanos, self.now_ms(), alert_thresholds)
            if event is None:
                return budget
            await repository.record(conn, event)
            await repository.record_alerts(conn, [account_id], event.updated_at_unix_ms, budget_id=budget_id)
            budget = await _budget(conn, account_id, budget_id)
        self.billing._committed()
        return budget

    async def delete_budget(self, account_id: str, budget_id: str) -> BudgetRecord:
        """Delete it and return it as it was last (open holds counted against it stay on wallet and key)."""
        async with self.billing._write() as conn:
            budget = await _budget(conn, account_id, budget_id)
            await repository.record(conn, budget_deleted(budget, self.now_ms()))
        self.billing._committed()
        return budget


async def _budget(conn: Executor, account_id: str, budget_id: str) -> BudgetRecord:
    budget = await repository.budget_record(conn, account_id, budget_id)
    if budget is None:
        if await repository.get_account(conn, account_id) is None:
            raise AccountNotFound(f"account {account_id} not found")
        raise BudgetNotFound(f"budget {budget_id} not found in account {account_id}")
    return budget


async def _check_scope(conn: Executor, account_id: str, scope: str, scope_id: str) -> None:
    if await repository.get_account(conn, account_id) is None:
        raise AccountNotFound(f"account {account_id} not found")
    if scope == "key":
        if await repository.key_record(conn, account_id, scope_id) is None:
            raise KeyNotFound(f"API key {scope_id} not found in account {account_id}")
    elif scope in ("team", "project"):
        await find_group(conn, account_id, scope, scope_id)
