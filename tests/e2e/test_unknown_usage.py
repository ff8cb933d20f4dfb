"""A request the provider may bill without telling us (the router timed out after sending it) is charged by
estimate — BILLING_UNKNOWN_USAGE_CHARGE's default, the prompt estimate — not released at zero; through real
ingress, router, metering and billing processes and the mock upstream's `timeout` fault."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import openai
import pytest
from tollgate.metering.v1 import metering_service_pb2, metering_service_pb2_grpc
from tollgate_dev.platform import Platform, PlatformConfig

from .conftest import ALL_PORTS, _kafka
from .tenant import NANOS, Tenant, mock_calls, resale_price

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def timeout_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The router gives a silent provider half a second (retries included), so a timeout is quick to reach."""
    with _kafka(shared_ok=False) as kafka:
        p = Platform(PlatformConfig(var_dir=tmp_path_factory.mktemp("timeouts") / "var",
                                    admin_token="tga-" + secrets.token_urlsafe(16), ports=dict(ALL_PORTS),
                                    kafka_bootstrap=kafka,
                                    extra_env={"router": {"ROUTER_UPSTREAM_TIMEOUT_SECONDS": "0.5"}}))
        p.start()
        try:
            yield p
        finally:
            p.stop()


def _usage_summary(platform: Platform, account_id: str) -> list[metering_service_pb2.UsageSummaryRow]:
    with grpc.insecure_channel(platform.grpc_addr("metering")) as channel:
        return list(metering_service_pb2_grpc.MeteringServiceStub(channel).GetUsageSummary(
            metering_service_pb2.GetUsageSummaryRequest(account_id=account_id), timeout=10,
            metadata=platform.caller_metadata("ops")).rows)


@pytest.mark.parametrize("stream", [False, True])
def test_a_timed_out_request_is_charged_its_prompt_estimate(timeout_platform: Platform, stream: bool) -> None:
    p = timeout_platform
    tenant = Tenant.create(p)
    before = len(mock_calls(p))
    with pytest.raises(openai.APIStatusError) as err:
        reply = tenant.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "are you there?"}], stream=stream,
            extra_body={"mock_fault": "timeout"})
        if stream:
            list(reply)  # type: ignore[arg-type]
    assert err.value.status_code == 504
    assert len(mock_calls(p)) > before, "the request reached the provider, which may bill it"

    after = tenant.settle(timeout=90)
    [row] = _usage_summary(p, tenant.account_id)
    assert row.prompt_tokens > 0 and row.completion_tokens == 0  # the estimate the hold was sized with
    charged = 10 * NANOS - after["balance_nanos"]
    assert charged == resale_price(p, "gpt-4o-mini", row.prompt_tokens, 0) > 0
