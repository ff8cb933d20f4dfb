"""The refund, credit-note and statement RPCs of BillingService (RefundCharge, IssueCreditNote, GetStatement).

A mixin of :class:`~tollgate_billing.grpc_server.BillingServicer`, like grpc_budgets.py: protobuf in, command or
query, protobuf out; errors mapped by the servicer's ``_mapped``.
"""

from __future__ import annotations

import grpc
from tollgate.billing.v1 import statements_pb2 as spb
from tollgate.events.v1 import billing_pb2

from .credit_admin import CreditAdmin
from .statement_admin import StatementAdmin

__all__ = ["StatementRpcs"]


class StatementRpcs:
    """Borrowed by BillingServicer (which has ``credit_admin`` and ``statement_admin``)."""

    credit_admin: CreditAdmin
    statement_admin: StatementAdmin

    async def RefundCharge(
        self, request: spb.RefundChargeRequest, context: grpc.aio.ServicerContext
    ) -> spb.RefundChargeResponse:
        r = await self.credit_admin.refund_charge(request.account_id, request.refund_id, request.request_id,
                                                  request.amount_nanos, request.reason)
        return spb.RefundChargeResponse(refund_id=r.adjustment_id, transaction_id=r.transaction_id,
                                        amount_nanos=r.amount_nanos, balance_nanos=r.balance_nanos,
                                        replayed=r.replayed, created_at_unix_ms=r.created_at_unix_ms)

    async def IssueCreditNote(
        self, request: spb.IssueCreditNoteRequest, context: grpc.aio.ServicerContext
    ) -> spb.IssueCreditNoteResponse:
        r = await self.credit_admin.issue_credit_note(request.account_id, request.credit_note_id, request.period,
                                                      request.amount_nanos, request.reason)
        return spb.IssueCreditNoteResponse(credit_note_id=r.adjustment_id, transaction_id=r.transaction_id,
                                           amount_nanos=r.amount_nanos, balance_nanos=r.balance_nanos,
                                           replayed=r.replayed, created_at_unix_ms=r.created_at_unix_ms)

    async def GetStatement(
        self, request: spb.GetStatementRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Statement:
        return await self.statement_admin.statement(request.account_id, request.period)
