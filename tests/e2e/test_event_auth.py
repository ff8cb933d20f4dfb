"""Kafka producer identity on the running platform, probed as an attacker who can reach the broker: usage events
produced straight to the topics, unsigned, from the wrong producer or signed with another secret, are parked by
billing and metering and never charge anyone, while the platform's own signed events keep flowing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator

import pytest
from tollgate.events.v1 import usage_pb2
from tollgate_common.event_auth import EventSigner
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.internal_auth import InternalKeys
from tollgate_common.kafka import make_producer
from tollgate_dev.platform import Platform

from .conftest import _kafka, _start
from .tenant import NANOS, Tenant


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform of its own: the forged events this test writes must not reach the shared platform's topics,
    whose rebuild tests replay every event (and today's rebuild does not check producer signatures, see
    docs/architecture.md)."""
    with _kafka(shared_ok=False) as kafka:
        own = _start(tmp_path_factory.mktemp("event-auth"), kafka)
        try:
            yield own
        finally:
            own.stop()
    assert not own.deaths, f"a service died during the test: {own.deaths}"


def _parked(platform: Platform, service: str) -> dict[str, str]:
    """event id → reason, from the service's ``parked_events`` table (the SQLite platform)."""
    path = platform.database_url(service).removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT event_id, reason FROM parked_events").fetchall())


async def _produce(bootstrap: str, records: list[tuple[str, Envelope, list[tuple[str, bytes]]]]) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for topic, env, headers in records:
            await producer.send_and_wait(topic, env.data, key=env.subject.encode(), headers=headers)
    finally:
        await producer.stop()


def _wait_parked(platform: Platform, service: str, ids: set[str], timeout: float = 60.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        parked = _parked(platform, service)
        if ids <= parked.keys():
            return {i: parked[i] for i in ids}
        if time.monotonic() > deadline:
            raise AssertionError(f"{service} did not park {sorted(ids - parked.keys())}: {parked}")
        time.sleep(0.2)


def test_forged_usage_events_are_parked_and_charge_nobody(platform: Platform) -> None:
    tenant = Tenant.create(platform, credit="10.00")
    # The platform's own flow (ingress → metering → billing, every hop signed) still charges.
    reply = tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None
    after_request = tenant.settle()
    assert 0 < 10 * NANOS - after_request["balance_nanos"] < NANOS
    entries = len(tenant.ledger())

    def rated(name: str, service: str = "metering") -> Envelope:
        rid = f"{name}_{uuid.uuid4().hex[:8]}"
        msg = usage_pb2.UsageRated(request_id=rid, account_id=tenant.account_id, hold_id=rid, model="gpt-4o",
                                   resale_price_nanos=5 * NANOS, upstream_cost_nanos=NANOS, currency="USD")
        return envelope_for(msg, id=rid, service=service, subject=tenant.account_id)

    unsigned = rated("forged_unsigned")
    foreign = rated("forged_foreign_secret")
    from_ingress = rated("forged_from_ingress", service="ingress")
    recorded_id = f"forged_recorded_{uuid.uuid4().hex[:8]}"
    recorded = envelope_for(
        usage_pb2.UsageRecorded(request_id=recorded_id, account_id=tenant.account_id, model="gpt-4o",
                                usage=usage_pb2.TokenUsage(prompt_tokens=10**7, completion_tokens=10**7)),
        id=recorded_id, service="ingress", subject=tenant.account_id,
    )
    other_deployment = InternalKeys("another-deployment-secret-0123456789abcdef")
    # Signed correctly, but by a key ingress holds: ingress may not produce UsageRated.
    ingress_signer = EventSigner("ingress", InternalKeys(platform.config.internal_secret))
    asyncio.run(_produce(platform.bootstrap, [
        (Topics.USAGE_RATED, unsigned, unsigned.headers()),
        (Topics.USAGE_RATED, foreign, EventSigner("metering", other_deployment).sign(foreign.headers(), foreign.data)),
        (Topics.USAGE_RATED, from_ingress, ingress_signer.sign(from_ingress.headers(), from_ingress.data)),
        (Topics.USAGE, recorded, recorded.headers()),
    ]))

    billing = _wait_parked(platform, "billing", {unsigned.id, foreign.id, from_ingress.id})
    assert "unsigned event" in billing[unsigned.id]
    assert "does not verify" in billing[foreign.id]
    assert "only be produced by metering" in billing[from_ingress.id]
    metering = _wait_parked(platform, "metering", {recorded_id})
    assert "unsigned event" in metering[recorded_id]

    # Nothing was charged, and the next genuine request is still served and charged.
    assert tenant.balance() == after_request
    assert len(tenant.ledger()) == entries
    tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])
    assert tenant.settle()["balance_nanos"] < after_request["balance_nanos"]
