"""Ingress's typed client of billing: the hold on the chat path, key look-ups, and the admin API's calls.

Each method is one RPC with the call's metadata and deadline, and its failure mapped once
(:class:`~tollgate_ingress.channels.UnaryCaller`). The chat path gets an :class:`Authorization`; the admin routes,
which render billing's records field by field, get billing's messages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from tollgate.billing.v1 import (
    alerts_pb2,
    billing_service_pb2_grpc,
    budgets_pb2,
    key_admin_pb2,
    statements_pb2,
    tenancy_pb2,
)
from tollgate.billing.v1 import billing_service_pb2 as bpb
from tollgate.events.v1 import billing_pb2

from .channels import CallMetadata, UnaryCaller
from .metrics import Metrics

__all__ = ["Authorization", "BillingClient"]


@dataclass(frozen=True, slots=True)
class Authorization:
    """A placed hold and the key's identity, as the usage event needs them."""

    account_id: str
    key_id: str
    hold_id: str
    team: str
    project: str
    #: The candidate model the hold was sized for (the most expensive); rates a usage nothing reports a model for.
    hold_model: str = ""
    #: The output cap the hold was sized with (the request's, else the hold model's); 0 when billing sent none.
    hold_output_tokens: int = 0


class BillingClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: CallMetadata, timeout: float, metrics: Metrics) -> None:
        self._stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        self._call = UnaryCaller("billing", metadata, timeout)
        self._authorize_seconds = metrics.upstream_seconds.labels("billing", "Authorize")

    # --- the chat path --------------------------------------------------------------------------------------
    async def authorize(
        self, api_key: str, request_id: str, models: Sequence[str], prompt_tokens: int, max_output_tokens: int
    ) -> Authorization:
        """Hold the maximum cost of the request over ``models`` (the first is the requested one; the hold covers
        the most expensive). Raises the mapped error: 401 unknown key, 402 no money, 429 rate limit…"""
        started = time.perf_counter()
        try:
            reply = await self._call(
                self._stub.Authorize,
                bpb.AuthorizeRequest(
                    api_key=api_key,
                    request_id=request_id,
                    model=models[0],
                    prompt_tokens=prompt_tokens,
                    max_output_tokens=max_output_tokens,
                    fallback_models=models[1:],
                ),
            )
        finally:
            self._authorize_seconds.observe(time.perf_counter() - started)
        return Authorization(
            account_id=reply.account_id,
            key_id=reply.key_id,
            hold_id=reply.hold_id or request_id,
            team=reply.team,
            project=reply.project,
            hold_model=reply.hold_model,
            hold_output_tokens=reply.hold_output_tokens,
        )

    async def key_info(self, api_key: str) -> bpb.GetKeyInfoResponse:
        """The key's holder, balance and limits; an unknown, revoked or expired key is a 401."""
        return await self._call(self._stub.GetKeyInfo, bpb.GetKeyInfoRequest(api_key=api_key))

    # --- accounts, credits, ledger (operator) -----------------------------------------------------------------
    async def create_account(self, name: str, currency: str, account_id: str, time_zone: str = "") -> bpb.Account:
        reply = await self._call(
            self._stub.CreateAccount,
            bpb.CreateAccountRequest(name=name, currency=currency, account_id=account_id, time_zone=time_zone),
        )
        return reply.account

    async def add_credits(
        self, account_id: str, amount_nanos: int, idempotency_key: str, description: str, credit_kind: str = "",
        expires_at_unix_ms: int = 0,
    ) -> bpb.AddCreditsResponse:
        return await self._call(
            self._stub.AddCredits,
            bpb.AddCreditsRequest(
                account_id=account_id, amount_nanos=amount_nanos, idempotency_key=idempotency_key,
                description=description, credit_kind=credit_kind, expires_at_unix_ms=expires_at_unix_ms,
            ),
        )

    async def balance(self, account_id: str) -> bpb.GetBalanceResponse:
        return await self._call(self._stub.GetBalance, bpb.GetBalanceRequest(account_id=account_id))

    async def ledger(self, account_id: str, limit: int, page_token: str = "") -> bpb.ListLedgerEntriesResponse:
        return await self._call(
            self._stub.ListLedgerEntries,
            bpb.ListLedgerEntriesRequest(account_id=account_id, limit=limit, page_token=page_token),
        )

    # --- an account's keys --------------------------------------------------------------------------------------
    async def create_key(self, request: bpb.CreateApiKeyRequest) -> bpb.CreateApiKeyResponse:
        return await self._call(self._stub.CreateApiKey, request)

    async def list_keys(self, request: key_admin_pb2.ListApiKeysRequest) -> key_admin_pb2.ListApiKeysResponse:
        return await self._call(self._stub.ListApiKeys, request)

    async def get_key(self, request: key_admin_pb2.GetApiKeyRequest) -> key_admin_pb2.ApiKey:
        return await self._call(self._stub.GetApiKey, request)

    async def update_key(self, request: key_admin_pb2.UpdateApiKeyRequest) -> key_admin_pb2.ApiKey:
        return await self._call(self._stub.UpdateApiKey, request)

    async def revoke_key(self, request: key_admin_pb2.RevokeApiKeyRequest) -> key_admin_pb2.ApiKey:
        return await self._call(self._stub.RevokeApiKey, request)

    async def rotate_key(self, request: key_admin_pb2.RotateApiKeyRequest) -> key_admin_pb2.RotateApiKeyResponse:
        return await self._call(self._stub.RotateApiKey, request)

    # --- teams and projects -------------------------------------------------------------------------------------
    async def create_group(self, request: tenancy_pb2.CreateGroupRequest) -> tenancy_pb2.Group:
        return await self._call(self._stub.CreateGroup, request)

    async def list_groups(self, request: tenancy_pb2.ListGroupsRequest) -> tenancy_pb2.ListGroupsResponse:
        return await self._call(self._stub.ListGroups, request)

    async def get_group(self, request: tenancy_pb2.GetGroupRequest) -> tenancy_pb2.Group:
        return await self._call(self._stub.GetGroup, request)

    async def update_group(self, request: tenancy_pb2.UpdateGroupRequest) -> tenancy_pb2.Group:
        return await self._call(self._stub.UpdateGroup, request)

    # --- budgets ------------------------------------------------------------------------------------------------
    async def create_budget(self, request: budgets_pb2.CreateBudgetRequest) -> budgets_pb2.Budget:
        return await self._call(self._stub.CreateBudget, request)

    async def list_budgets(self, request: budgets_pb2.ListBudgetsRequest) -> budgets_pb2.ListBudgetsResponse:
        return await self._call(self._stub.ListBudgets, request)

    async def get_budget(self, request: budgets_pb2.GetBudgetRequest) -> budgets_pb2.Budget:
        return await self._call(self._stub.GetBudget, request)

    async def update_budget(self, request: budgets_pb2.UpdateBudgetRequest) -> budgets_pb2.Budget:
        return await self._call(self._stub.UpdateBudget, request)

    async def delete_budget(self, request: budgets_pb2.DeleteBudgetRequest) -> budgets_pb2.Budget:
        return await self._call(self._stub.DeleteBudget, request)

    # --- alerts -------------------------------------------------------------------------------------------------
    async def get_balance_alert(self, account_id: str) -> alerts_pb2.BalanceAlert:
        return await self._call(self._stub.GetBalanceAlert, alerts_pb2.GetBalanceAlertRequest(account_id=account_id))

    async def set_balance_alert(self, account_id: str, threshold_nanos: int) -> alerts_pb2.BalanceAlert:
        return await self._call(self._stub.SetBalanceAlert, alerts_pb2.SetBalanceAlertRequest(
            account_id=account_id, threshold_nanos=threshold_nanos))

    # --- refunds, credit notes, statements (statements.proto) ---------------------------------------------------
    async def refund_charge(self, request: statements_pb2.RefundChargeRequest) -> statements_pb2.RefundChargeResponse:
        return await self._call(self._stub.RefundCharge, request)

    async def issue_credit_note(
        self, request: statements_pb2.IssueCreditNoteRequest
    ) -> statements_pb2.IssueCreditNoteResponse:
        return await self._call(self._stub.IssueCreditNote, request)

    async def statement(self, account_id: str, period: str) -> billing_pb2.Statement:
        return await self._call(self._stub.GetStatement,
                                statements_pb2.GetStatementRequest(account_id=account_id, period=period))
