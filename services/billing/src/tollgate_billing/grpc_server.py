"""The gRPC transport: protobuf in, application call, protobuf out. Errors are mapped here, once, for every RPC."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter
from tollgate.billing.v1 import billing_service_pb2 as pb
from tollgate.billing.v1 import billing_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import abort
from tollgate_common.internal_auth import InternalAuth, guard_servicer
from tollgate_common.logs import request_id_var
from tollgate_common.telemetry import attach_traceparent

from .alert_admin import AlertAdmin
from .application import Billing
from .budget_admin import BudgetAdmin
from .credit_admin import CreditAdmin
from .errors import BillingError
from .group_admin import GroupAdmin
from .grpc_alerts import AlertRpcs
from .grpc_budgets import BudgetRpcs
from .grpc_keys import GroupRpcs, KeyRpcs
from .grpc_statements import StatementRpcs
from .key_admin import KeyAdmin
from .repository import AccountRow
from .statement_admin import StatementAdmin

__all__ = ["CALLERS", "SERVICE_NAME", "BillingServicer"]

log = logging.getLogger(__name__)

SERVICE_NAME = "tollgate.billing.v1.BillingService"

AUTHORIZATIONS = Counter(
    "tollgate_billing_authorizations_total", "Authorize calls by outcome (ok or the error reason)", ["outcome"]
)

_INGRESS = frozenset({"ingress"})
#: Who may call what (see tollgate_common.internal_auth): everything here is ingress's, the public API and the admin
#: API behind it. Metering's usage reaches billing by Kafka, never by a call.
CALLERS: dict[str, frozenset[str]] = {
    name: _INGRESS
    for name in (
        "Authorize",
        "GetKeyInfo",
        "CreateAccount",
        "CreateApiKey",
        "AddCredits",
        "GetBalance",
        "ListLedgerEntries",
        "ListApiKeys",
        "GetApiKey",
        "UpdateApiKey",
        "RevokeApiKey",
        "RotateApiKey",
        "CreateGroup",
        "ListGroups",
        "GetGroup",
        "UpdateGroup",
        "CreateBudget",
        "ListBudgets",
        "GetBudget",
        "UpdateBudget",
        "DeleteBudget",
        "GetBalanceAlert",
        "SetBalanceAlert",
        "RefundCharge",
        "IssueCreditNote",
        "GetStatement",
    )
}

R = TypeVar("R")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def _mapped(method: Method[R]) -> Method[R]:
    """Turn a :class:`BillingError` into its gRPC status + ``tollgate-reason`` (+ ``retry-after``)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        attach_traceparent(context)  # no server interceptor: the caller's trace continues here
        try:
            return await method(self, request, context)
        except BillingError as exc:
            if method.__name__ == "Authorize":
                AUTHORIZATIONS.labels(exc.reason).inc()
            await abort(context, exc.status, str(exc), reason=exc.reason, retry_after=exc.retry_after)
            raise  # unreachable: abort raises

    return wrapper


def _account(row: AccountRow) -> pb.Account:
    return pb.Account(
        account_id=row.account_id, name=row.name, currency=row.currency, created_at_unix_ms=row.created_at_unix_ms,
        time_zone=row.time_zone,
    )


@guard_servicer(CALLERS, pb_grpc.BillingServiceServicer)
class BillingServicer(pb_grpc.BillingServiceServicer):  # type: ignore[misc]
    def __init__(self, billing: Billing, internal_auth: InternalAuth) -> None:
        self.billing = billing
        self.internal_auth = internal_auth
        self.key_admin = KeyAdmin(billing)
        self.group_admin = GroupAdmin(billing)
        self.budget_admin = BudgetAdmin(billing)
        self.alert_admin = AlertAdmin(billing)
        self.credit_admin = CreditAdmin(billing)
        self.statement_admin = StatementAdmin(billing)

    # The key lifecycle RPCs live in grpc_keys.py; mapped like the rest.
    ListApiKeys = _mapped(KeyRpcs.ListApiKeys)
    GetApiKey = _mapped(KeyRpcs.GetApiKey)
    UpdateApiKey = _mapped(KeyRpcs.UpdateApiKey)
    RevokeApiKey = _mapped(KeyRpcs.RevokeApiKey)
    RotateApiKey = _mapped(KeyRpcs.RotateApiKey)
    CreateGroup = _mapped(GroupRpcs.CreateGroup)
    ListGroups = _mapped(GroupRpcs.ListGroups)
    GetGroup = _mapped(GroupRpcs.GetGroup)
    UpdateGroup = _mapped(GroupRpcs.UpdateGroup)
    CreateBudget = _mapped(BudgetRpcs.CreateBudget)
    ListBudgets = _mapped(BudgetRpcs.ListBudgets)
    GetBudget = _mapped(BudgetRpcs.GetBudget)
    UpdateBudget = _mapped(BudgetRpcs.UpdateBudget)
    DeleteBudget = _mapped(BudgetRpcs.DeleteBudget)
    GetBalanceAlert = _mapped(AlertRpcs.GetBalanceAlert)
    SetBalanceAlert = _mapped(AlertRpcs.SetBalanceAlert)
    RefundCharge = _mapped(StatementRpcs.RefundCharge)
    IssueCreditNote = _mapped(StatementRpcs.IssueCreditNote)
    GetStatement = _mapped(StatementRpcs.GetStatement)

    @_mapped
    async def Authorize(self, request: pb.AuthorizeRequest, context: grpc.aio.ServicerContext) -> pb.AuthorizeResponse:
        request_id_var.set(request.request_id)
        result = await self.billing.authorize(
            request.api_key,
            request.request_id,
            request.model,
            request.prompt_tokens,
            request.max_output_tokens,
            list(request.fallback_models),
        )
        AUTHORIZATIONS.labels("ok").inc()
        return pb.AuthorizeResponse(
            account_id=result.account_id,
            key_id=result.key_id,
            hold_id=result.hold_id,
            hold_amount_nanos=result.hold_amount_nanos,
            currency=result.currency,
            team=result.team,
            project=result.project,
            hold_model=result.hold_model,
            hold_output_tokens=result.hold_output_tokens,
        )

    @_mapped
    async def GetKeyInfo(
        self, request: pb.GetKeyInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetKeyInfoResponse:
        info = await self.billing.get_key_info(request.api_key)
        grant = info.key.grant
        return pb.GetKeyInfoResponse(
            key_id=grant.key_id,
            account_id=grant.account_id,
            label=info.key.label,
            currency=grant.currency,
            balance_nanos=info.balance_nanos,
            usage_nanos=info.key.usage_nanos,
            has_limit=grant.has_limit,
            limit_nanos=grant.limit_nanos,
            limit_remaining_nanos=info.limit_remaining_nanos,
            account_admin=info.key.account_admin,
            tightest_limit=None if info.tightest is None else pb.TightestLimit(
                scope=info.tightest.scope, scope_id=info.tightest.scope_id, budget_id=info.tightest.budget_id,
                period=info.tightest.period, limit_nanos=info.tightest.limit_nanos,
                remaining_nanos=info.tightest.remaining_nanos, resets_at_unix_ms=info.tightest.resets_at_unix_ms),
        )

    @_mapped
    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateAccountResponse:
        account, _created = await self.billing.create_account(request.name, request.currency, request.account_id,
                                                              request.time_zone)
        return pb.CreateAccountResponse(account=_account(account))

    @_mapped
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        created = await self.billing.create_api_key(
            request.account_id,
            label=request.label,
            has_limit=request.has_limit,
            limit_nanos=request.limit_nanos,
            allowed_models=list(request.allowed_models),
            team=request.team,
            project=request.project,
            rate_limit_rpm=request.rate_limit_rpm,
            account_admin=request.account_admin,
            expires_at_unix_ms=request.expires_at_unix_ms,
        )
        return pb.CreateApiKeyResponse(key_id=created.key_id, api_key=created.api_key, prefix=created.prefix)

    @_mapped
    async def AddCredits(
        self, request: pb.AddCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddCreditsResponse:
        result = await self.billing.add_credits(
            request.account_id, request.amount_nanos, request.idempotency_key, request.description,
            credit_kind=request.credit_kind, expires_at_unix_ms=request.expires_at_unix_ms,
        )
        return pb.AddCreditsResponse(
            transaction_id=result.transaction_id, balance_nanos=result.balance_nanos, replayed=result.replayed
        )

    @_mapped
    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        wallet = await self.billing.get_balance(request.account_id)
        return pb.GetBalanceResponse(
            account_id=wallet.account_id,
            currency=wallet.currency,
            balance_nanos=wallet.balance_nanos,
            held_nanos=wallet.held_nanos,
            available_nanos=wallet.available_nanos,
        )

    @_mapped
    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLedgerEntriesResponse:
        rows, next_token = await self.billing.ledger_page(request.account_id, request.limit, request.page_token)
        return pb.ListLedgerEntriesResponse(
            next_page_token=next_token,
            entries=[
                pb.LedgerEntry(
                    transaction_id=r.transaction_id,
                    kind=r.kind,
                    ledger_account=r.ledger_account,
                    amount_nanos=r.amount_nanos,
                    reference=r.reference,
                    created_at_unix_ms=r.created_at_unix_ms,
                )
                for r in rows
            ]
        )
