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


def test_the_clients_trace_reaches_the_usage_events(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    client = tenant.client().with_options(default_headers={"traceparent": traceparent})
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me"}]
    )
    request_id = raw.headers["x-request-id"]
    tenant.settle()

    recorded = [e for e in _events(platform, Topics.USAGE) if e.id == request_id]
    assert recorded, "ingress published no usage event for the request"
    assert recorded[0].traceparent.split("-")[1] == trace_id

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
