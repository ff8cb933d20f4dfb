"""Billing's internal plane: only ingress may call it, and an unexpected failure tells the caller nothing internal.

Before the caller tokens anyone on the pod network could call ``AddCredits`` or ``CreateApiKey``; before the generic
INTERNAL mapping an unexpected exception reached the caller as ``Unexpected <OperationalError>: … SQL …``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from billing_support import MODEL, Database, FakeMeteringServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tollgate.billing.v1 import billing_service_pb2 as pb
from tollgate.billing.v1 import billing_service_pb2_grpc as pb_grpc
from tollgate_billing.app import BillingApp
from tollgate_common.grpc import error_reason
from tollgate_common.internal_auth import CALLER_KEY, InternalKeys, mint_token

SECRET = "billing-test-internal-secret-0123456789"


def as_(service: str, secret: str = SECRET) -> tuple[tuple[str, str], ...]:
    return ((CALLER_KEY, mint_token(secret, service)),)


@pytest.fixture
async def app(sqlite_db: Database, metering: FakeMeteringServer) -> AsyncIterator[BillingApp]:
    settings = replace(sqlite_db.settings(metering_addr=metering.address), internal_keys=InternalKeys(SECRET))
    billing = BillingApp(settings)
    await billing.start()
    yield billing
    await billing.stop()


@pytest.fixture
async def stub(app: BillingApp) -> AsyncIterator[pb_grpc.BillingServiceStub]:
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield pb_grpc.BillingServiceStub(channel)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_credits_and_keys_cannot_be_made_without_a_caller_token(stub: pb_grpc.BillingServiceStub) -> None:
    account = (await stub.CreateAccount(pb.CreateAccountRequest(name="Acme"), metadata=as_("ingress"))).account
    credit = pb.AddCreditsRequest(account_id=account.account_id, amount_nanos=10**12, idempotency_key="free")
    assert await _code(stub.AddCredits(credit)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(stub.AddCredits(credit, metadata=as_("ingress", "x" * 40))) == grpc.StatusCode.UNAUTHENTICATED
    key = pb.CreateApiKeyRequest(account_id=account.account_id, label="stolen")
    assert await _code(stub.CreateApiKey(key)) == grpc.StatusCode.UNAUTHENTICATED
    balance = await stub.GetBalance(pb.GetBalanceRequest(account_id=account.account_id), metadata=as_("ingress"))
    assert balance.balance_nanos == 0  # nothing was credited


async def test_another_service_is_refused_with_permission_denied(stub: pb_grpc.BillingServiceStub) -> None:
    for caller in ("router", "metering", "policy", "ops"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateAccount(pb.CreateAccountRequest(name="Acme"), metadata=as_(caller))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(info.value) == "permission_denied"


async def test_ingress_is_served_and_health_stays_open(app: BillingApp, stub: pb_grpc.BillingServiceStub) -> None:
    reply = await stub.CreateAccount(pb.CreateAccountRequest(name="Acme"), metadata=as_("ingress"))
    assert reply.account.account_id
    async with grpc.aio.insecure_channel(app.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_unexpected_error_is_a_generic_internal_with_the_request_id(
    sqlite_db: Database, stub: pb_grpc.BillingServiceStub
) -> None:
    account = (await stub.CreateAccount(pb.CreateAccountRequest(name="Acme"), metadata=as_("ingress"))).account
    await stub.AddCredits(pb.AddCreditsRequest(account_id=account.account_id, amount_nanos=10**9,
                                               idempotency_key="seed"), metadata=as_("ingress"))
    key = await stub.CreateApiKey(pb.CreateApiKeyRequest(account_id=account.account_id, label="t"),
                                  metadata=as_("ingress"))
    with sqlite3.connect(sqlite_db.url.removeprefix("sqlite:///")) as db:
        db.execute("DROP TABLE holds")  # the next hold fails inside SQLAlchemy with the SQL in its message
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Authorize(pb.AuthorizeRequest(api_key=key.api_key, request_id="req_boom", model=MODEL,
                                                 prompt_tokens=10), metadata=as_("ingress"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id req_boom)"
    assert error_reason(info.value) == "internal"


def test_outside_development_billing_will_not_start_without_the_secret() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(TOLLGATE_ENV="production", BILLING_DATABASE_URL="sqlite:///:memory:")
    proc = subprocess.run([sys.executable, "-m", "tollgate_billing"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "TOLLGATE_INTERNAL_SECRET is required" in proc.stderr
