"""kill -9 ingress while its request is at the provider: no usage event is ever published for it, so metering
settles it from the router's attempt events (METERING_RECONCILE_AFTER_SECONDS), long before billing's hold TTL —
the hold is captured, not expired in full and left flagged for reconciliation, at the priced prompt estimate
ingress passed the router (the attempts carry it), not the whole hold."""

from __future__ import annotations

import secrets
import threading
import time
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
def reconciling_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with _kafka(shared_ok=False) as kafka:
        p = Platform(PlatformConfig(
            var_dir=tmp_path_factory.mktemp("reconcile") / "var", admin_token="tga-" + secrets.token_urlsafe(16),
            ports=dict(ALL_PORTS), kafka_bootstrap=kafka,
            extra_env={"metering": {"METERING_RECONCILE_AFTER_SECONDS": "2",
                                    "METERING_RECONCILE_SWEEP_SECONDS": "0.5"}}))
        p.start()
        try:
            yield p
        finally:
            p.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_ingress_died_is_settled_from_the_routers_attempts(
    reconciling_platform: Platform, stream: bool
) -> None:
    """Unary: kill -9 while the provider is still thinking. Stream: kill -9 after the first chunk reached the
    caller (a stream cut by an ingress crash: the router closes the upstream, so no provider usage ever comes)."""
    p = reconciling_platform
    tenant = Tenant.create(p)
    before = len(mock_calls(p))
    first_chunk = threading.Event()

    def call() -> None:
        client = openai.OpenAI(base_url=f"{p.ingress_url}/v1", api_key=tenant.api_key, max_retries=0, timeout=30)
        try:
            if stream:
                chunks = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "slow"}], stream=True,
                    extra_body={"mock_chunk_delay_ms": 1000})
                for _ in chunks:
                    first_chunk.set()
            else:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "slow"}],
                                               extra_body={"mock_latency_ms": 5000})
        except openai.APIError:
            pass  # ingress dies under it
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 20
    while len(mock_calls(p)) == before or (stream and not first_chunk.is_set()):  # the request is at the provider
        assert time.monotonic() < deadline, "the request never reached the provider"
        time.sleep(0.05)
    held = tenant.balance()["held_nanos"]
    assert held > 0
    p.kill("ingress")  # before it could publish any usage event
    caller.join(30)
    p.restart("ingress")

    after = tenant.settle(timeout=60)  # far below the 600 s hold TTL: settled by the reconciled usage event
    kinds = {e["kind"] for e in tenant.ledger()}
    assert "usage_charge" in kinds and "hold_expiry_charge" not in kinds
    with grpc.insecure_channel(p.grpc_addr("metering")) as channel:
        rows = metering_service_pb2_grpc.MeteringServiceStub(channel).GetUsageSummary(
            metering_service_pb2.GetUsageSummaryRequest(account_id=tenant.account_id), timeout=10,
            metadata=p.caller_metadata("ops")).rows
    [row] = rows
    assert row.requests == 1
    # The router recorded the attempt as cancelled with unknown usage and no counts, but with the prompt estimate
    # ingress sized the hold with: the default BILLING_UNKNOWN_USAGE_CHARGE=prompt charges exactly that estimate,
    # priced, no output; not the hold (which also covers max output).
    assert row.prompt_tokens > 0 and row.completion_tokens == 0
    charged = 10 * NANOS - after["balance_nanos"]
    assert charged == resale_price(p, "gpt-4o-mini", row.prompt_tokens, 0)
    assert 0 < charged < held
