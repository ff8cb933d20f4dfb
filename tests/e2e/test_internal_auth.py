"""The running platform's internal plane, probed as an attacker on the pod network would: every service refuses a
call without the deployment's caller token, and the one service allowed (ingress) is served, as every other e2e
test shows by working at all."""

from __future__ import annotations

import grpc
import pytest
from tollgate.billing.v1 import billing_service_pb2 as bpb
from tollgate.billing.v1 import billing_service_pb2_grpc as bpb_grpc
from tollgate.metering.v1 import metering_service_pb2 as mpb
from tollgate.metering.v1 import metering_service_pb2_grpc as mpb_grpc
from tollgate.router.v1 import router_service_pb2 as rpb
from tollgate.router.v1 import router_service_pb2_grpc as rpb_grpc
from tollgate_common.internal_auth import CALLER_KEY, mint_token
from tollgate_dev.platform import Platform


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return, attr-defined]


def test_outsiders_cannot_mint_credit_or_use_the_router(platform: Platform) -> None:
    forged = ((CALLER_KEY, mint_token("not-the-deployment-secret-0123456789", "ingress")),)
    with grpc.insecure_channel(platform.grpc_addr("billing")) as channel:
        billing = bpb_grpc.BillingServiceStub(channel)
        credit = bpb.AddCreditsRequest(account_id="acct_any", amount_nanos=10**15, idempotency_key="x")
        assert _code(lambda: billing.AddCredits(credit, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: billing.AddCredits(credit, timeout=10, metadata=forged)) == grpc.StatusCode.UNAUTHENTICATED
        ops = platform.caller_metadata("ops")
        assert _code(lambda: billing.AddCredits(credit, timeout=10, metadata=ops)) == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(platform.grpc_addr("router")) as channel:
        router = rpb_grpc.RouterServiceStub(channel)
        call = rpb.CompleteRequest(request_id="r", model="gpt-4o-mini", body_json=b'{"messages": []}')
        assert _code(lambda: router.Complete(call, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(platform.grpc_addr("metering")) as channel:
        metering = mpb_grpc.MeteringServiceStub(channel)
        assert _code(lambda: metering.GetUsageSummary(mpb.GetUsageSummaryRequest(account_id="a"), timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
