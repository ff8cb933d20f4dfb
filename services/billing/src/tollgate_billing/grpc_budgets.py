"""The budget RPCs of BillingService (CreateBudget, ListBudgets, GetBudget, UpdateBudget, DeleteBudget).

A mixin of :class:`~tollgate_billing.grpc_server.BillingServicer`, like grpc_keys.py: protobuf in,
:class:`BudgetAdmin` call, protobuf out; errors mapped by the servicer's ``_mapped``.
"""

from __future__ import annotations

import grpc
from tollgate.billing.v1 import budgets_pb2 as bpb

from .budget_admin import BudgetAdmin
from .budgets import PERIODS, SCOPES, BudgetRecord, period_bounds

__all__ = ["BudgetRpcs", "budget_message"]


def budget_message(budget: BudgetRecord, now_unix_ms: int) -> bpb.Budget:
    """The budget as of ``now``: its spend is the current period's (0 once the stored period is past)."""
    start, end = period_bounds(budget.period, budget.time_zone, now_unix_ms)
    return bpb.Budget(
        budget_id=budget.budget_id, account_id=budget.account_id, scope=SCOPES[budget.scope],  # type: ignore[arg-type]
        scope_id=budget.scope_id, period=PERIODS[budget.period], limit_nanos=budget.limit_nanos,  # type: ignore[arg-type]
        spent_nanos=budget.spent_at(now_unix_ms), held_nanos=budget.held_nanos,
        remaining_nanos=budget.remaining_at(now_unix_ms), period_start_unix_ms=start, resets_at_unix_ms=end,
        created_at_unix_ms=budget.created_at_unix_ms, updated_at_unix_ms=budget.updated_at_unix_ms or 0,
        time_zone=budget.time_zone, alert_thresholds=budget.alert_thresholds,
        last_crossed_percent=budget.last_crossed_percent,
        last_crossed_at_unix_ms=budget.last_crossed_at_unix_ms or 0,
        last_crossed_period_start_unix_ms=budget.last_crossed_period_start_unix_ms,
    )


def _thresholds(request: bpb.CreateBudgetRequest | bpb.UpdateBudgetRequest) -> list[int] | None:
    """The request's alert thresholds; None when absent (the default on create, unchanged on update)."""
    return list(request.alert_thresholds.percents) if request.HasField("alert_thresholds") else None


class BudgetRpcs:
    """Borrowed by BillingServicer (which has ``budget_admin``)."""

    budget_admin: BudgetAdmin

    async def CreateBudget(self, request: bpb.CreateBudgetRequest, context: grpc.aio.ServicerContext) -> bpb.Budget:
        budget = await self.budget_admin.create_budget(request.account_id, request.scope, request.scope_id,
                                                       request.period, request.limit_nanos, _thresholds(request))
        return budget_message(budget, self.budget_admin.now_ms())

    async def ListBudgets(
        self, request: bpb.ListBudgetsRequest, context: grpc.aio.ServicerContext
    ) -> bpb.ListBudgetsResponse:
        now = self.budget_admin.now_ms()
        return bpb.ListBudgetsResponse(budgets=[budget_message(b, now) for b in
                                                await self.budget_admin.list_budgets(request.account_id)])

    async def GetBudget(self, request: bpb.GetBudgetRequest, context: grpc.aio.ServicerContext) -> bpb.Budget:
        budget = await self.budget_admin.get_budget(request.account_id, request.budget_id)
        return budget_message(budget, self.budget_admin.now_ms())

    async def UpdateBudget(self, request: bpb.UpdateBudgetRequest, context: grpc.aio.ServicerContext) -> bpb.Budget:
        limit = request.limit_nanos if request.HasField("limit_nanos") else None
        budget = await self.budget_admin.update_budget(request.account_id, request.budget_id, limit,
                                                       _thresholds(request))
        return budget_message(budget, self.budget_admin.now_ms())

    async def DeleteBudget(self, request: bpb.DeleteBudgetRequest, context: grpc.aio.ServicerContext) -> bpb.Budget:
        budget = await self.budget_admin.delete_budget(request.account_id, request.budget_id)
        return budget_message(budget, self.budget_admin.now_ms())
