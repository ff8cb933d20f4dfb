"""One trace from the HTTP request through the gRPC hops and into the Kafka headers (DESIGN: Deployment and
telemetry). The client sends a W3C ``traceparent``; the usage event ingress publishes carries the same trace id."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import replay_topics
from tollgate_dev.platform import Platform

from .tenant import Tenant

pytestmark = pytest.mark.e2e


def _events(platform: Platform, topic: str) -> list[Envelope]:
    found: list[Envelope] = []

    async def collect(items: list[tuple[Envelope, object]]) -> None:
        found.extend(env for env, _ in items)

    asyncio.run(replay_topics(platform.bootstrap, [topic], collect))
    return found


@pytest.mark.parametrize("client_sends_a_trace", [True, False])
def test_one_trace_id_from_the_request_to_every_event(platform: Platform, client_sends_a_trace: bool) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    trace_id = secrets.token_hex(16)
    if client_sends_a_trace:
        client = client.with_options(default_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me"}]
    )
    request_id = raw.headers["x-request-id"]
    tenant.settle()

    recorded = [e for e in _events(platform, Topics.USAGE) if e.id == request_id]
    assert recorded, "ingress published no usage event for the request"
    if client_sends_a_trace:
        assert recorded[0].traceparent.split("-")[1] == trace_id
    else:  # ingress started one
        trace_id = recorded[0].traceparent.split("-")[1]
        assert len(trace_id) == 32 and int(trace_id, 16) != 0

    rated = [e for e in _events(platform, Topics.USAGE_RATED) if e.id == request_id]
    assert rated, "metering published no rated event for the request"
    assert rated[0].traceparent.split("-")[1] == trace_id, "metering must continue the trace it consumed"

    # billing publishes its log from its outbox a moment after the capture commits
    wanted = {"tollgate.billing.v1.hold.placed", "tollgate.billing.v1.hold.captured"}
    deadline = time.monotonic() + 15
    while True:
        traces = {e.type: e.traceparent.split("-")[1] if e.traceparent else ""
                  for e in _events(platform, Topics.BILLING) if e.id.endswith(request_id)}
        if wanted <= traces.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {t: traces.get(t) for t in wanted} == {t: trace_id for t in wanted}, traces


def test_every_service_serves_metrics_on_its_own_port_and_ingress_not_on_its_api_port(platform: Platform) -> None:
    """Issue 12: ingress served /metrics on its public port, where any Ingress path or client could read it. Each
    process now serves it on its own metrics port (loopback by default); the API port answers 404."""
    import httpx

    Tenant.create(platform).client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert httpx.get(f"{platform.ingress_url}/metrics", timeout=10).status_code == 404
    expected = {"ingress": "tollgate_ingress_requests_total", "router": "tollgate_router_",
                "policy": "tollgate_policy_", "billing": "tollgate_billing_", "metering": "tollgate_"}
    for service, metric in expected.items():
        reply = httpx.get(platform.metrics_url(service), timeout=10)
        assert reply.status_code == 200, service
        assert metric in reply.text, service
