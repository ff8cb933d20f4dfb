"""The balance alert RPCs of BillingService (GetBalanceAlert, SetBalanceAlert).

A mixin of :class:`~tollgate_billing.grpc_server.BillingServicer`, like grpc_budgets.py: protobuf in,
:class:`AlertAdmin` call, protobuf out; errors mapped by the servicer's ``_mapped``.
"""

from __future__ import annotations

import grpc
from tollgate.billing.v1 import alerts_pb2 as apb

from .alert_admin import AlertAdmin, BalanceAlertRecord

__all__ = ["AlertRpcs", "balance_alert_message"]


def balance_alert_message(alert: BalanceAlertRecord) -> apb.BalanceAlert:
    return apb.BalanceAlert(account_id=alert.account_id, threshold_nanos=alert.threshold_nanos,
                            currency=alert.currency, low=alert.low, last_low_at_unix_ms=alert.last_low_at_unix_ms or 0,
                            updated_at_unix_ms=alert.updated_at_unix_ms or 0)


class AlertRpcs:
    """Borrowed by BillingServicer (which has ``alert_admin``)."""

    alert_admin: AlertAdmin

    async def GetBalanceAlert(self, request: apb.GetBalanceAlertRequest,
                              context: grpc.aio.ServicerContext) -> apb.BalanceAlert:
        return balance_alert_message(await self.alert_admin.get_balance_alert(request.account_id))

    async def SetBalanceAlert(self, request: apb.SetBalanceAlertRequest,
                              context: grpc.aio.ServicerContext) -> apb.BalanceAlert:
        return balance_alert_message(await self.alert_admin.set_balance_alert(request.account_id,
                                                                             request.threshold_nanos))
