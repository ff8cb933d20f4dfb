"""Kafka producer identity on the running platform, probed as an attacker who can reach the broker: usage events
produced straight to the topics, unsigned, from the wrong producer or signed with another secret, are parked by
billing and metering and never charge anyone, while the platform's own signed events keep flowing. Every other
reader of the log — ``tollgate replay``, ``tollgate reconcile``, the services' ``rebuild`` commands — skips and
reports the same records instead of applying them.

These tests run on the shared platform: since the readers check producers too, the forged records they leave in
the topics are refused by every other test's replay instead of turning into live-vs-rebuilt differences."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from tollgate.events.v1 import attempts_pb2, usage_pb2
from tollgate_billing.domain import credits_added
from tollgate_common.event_auth import EventSigner
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.internal_auth import InternalKeys
from tollgate_common.kafka import make_producer
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, operator_env, rebuild
from .test_ops import live_args, tollgate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


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


def _forge_credit(platform: Platform, tenant: Tenant) -> dict[str, str]:
    """Records that would give the tenant $1,000 if a reader applied them: an unsigned ``CreditsAdded`` claiming
    billing, one signed by ingress's key as ingress, one signed as billing with another deployment's secret; and an
    unsigned ``UsageRecorded`` that would rate 20M tokens. Returns event id → how it was forged."""
    forged: dict[str, str] = {}
    records = []
    other = InternalKeys("another-deployment-secret-0123456789abcdef")
    ingress_signer = EventSigner("ingress", InternalKeys(platform.config.internal_secret))
    for how, service, signer in (("unsigned", "billing", None), ("as ingress", "ingress", ingress_signer),
                                 ("foreign secret", "billing", EventSigner("billing", other))):
        tx = f"forged_credit_{uuid.uuid4().hex[:8]}"
        msg = credits_added(tenant.account_id, 1000 * NANOS, tx, tx, "forged", int(time.time() * 1000))
        env = envelope_for(msg, id=f"credits.added:{tx}", service=service, subject=tenant.account_id)
        headers = signer.sign(env.headers(), env.data) if signer else env.headers()
        records.append((Topics.BILLING, env, headers))
        forged[env.id] = how
    rid = f"forged_usage_{uuid.uuid4().hex[:8]}"
    usage = envelope_for(usage_pb2.UsageRecorded(request_id=rid, account_id=tenant.account_id, model="gpt-4o",
                                                 hold_id=rid, usage=usage_pb2.TokenUsage(prompt_tokens=10**7,
                                                                                         completion_tokens=10**7)),
                         id=rid, service="ingress", subject=tenant.account_id)
    records.append((Topics.USAGE, usage, usage.headers()))
    forged[rid] = "unsigned"
    asyncio.run(_produce(platform.bootstrap, records))
    return forged


def _no_secret(environment: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    return {**env, "TOLLGATE_ENV": environment}


def test_replay_and_rebuilds_refuse_what_the_live_consumers_park(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform, credit="10.00")
    tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    live = tenant.settle()
    forged = _forge_credit(platform, tenant)
    _wait_parked(platform, "metering", {i for i, how in forged.items() if i.startswith("forged_usage")})
    assert tenant.balance() == live  # billing never applied any of it

    report: dict[str, object] = {}
    for attempt in range(6):  # the live outboxes may still be publishing this test's genuine events
        result = tollgate("replay", "--kafka", platform.bootstrap, "--into", f"sqlite:///{tmp_path}/r{attempt}.db",
                          "--json", *live_args(platform), platform=platform)
        report = json.loads(result.stdout or "{}")
        if result.returncode == 0:
            break
        time.sleep(1.0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["producers_verified"] is True
    refused = {r["event_id"]: r["reason"] for r in report["refused"]}  # type: ignore[attr-defined]
    assert forged.keys() <= refused.keys(), refused
    by_how = {how: refused[i] for i, how in forged.items() if i.startswith("credits.added")}
    assert "unsigned event" in by_how["unsigned"]
    assert "only be produced by billing" in by_how["as ingress"]
    assert "does not verify" in by_how["foreign secret"]
    assert report["accounts"][tenant.account_id]["balance_nanos"] == live["balance_nanos"]  # type: ignore[index]

    # Without the check (development without a secret) the same replay applies the forged credits: the test
    # above would fail without the fix.
    unchecked = tollgate("replay", "--kafka", platform.bootstrap, "--into", f"sqlite:///{tmp_path}/unchecked.db",
                         "--json", *live_args(platform), env=_no_secret("development"))
    assert unchecked.returncode == 1, unchecked.stdout + unchecked.stderr
    assert json.loads(unchecked.stdout)["producers_verified"] is False
    # Outside development the secret is required, as for the services.
    prod = tollgate("replay", "--kafka", platform.bootstrap, "--into", f"sqlite:///{tmp_path}/prod.db",
                    env=_no_secret("production"))
    assert prod.returncode == 2 and "TOLLGATE_INTERNAL_SECRET" in prod.stderr

    # The services' own rebuild commands refuse them too, and equal live.
    for service in ("billing", "metering"):
        done = rebuild(platform, service, f"sqlite:///{tmp_path}/{service}-rebuild.db")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "refused" in done.stdout and any(i in done.stdout for i in forged), done.stdout


def test_reconcile_does_not_count_a_forged_attempt(platform: Platform) -> None:
    tenant = Tenant.create(platform, credit="10.00")
    tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    tenant.settle()
    rid = f"forged_attempt_{uuid.uuid4().hex[:8]}"
    attempt = envelope_for(attempts_pb2.AttemptRecorded(
        request_id=rid, account_id=tenant.account_id, attempt=1, model="gpt-4o", provider="mock",
        outcome=attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED, http_status=200, started_at_unix_ms=1),
        id=f"{rid}:1", service="router", subject=tenant.account_id)
    asyncio.run(_produce(platform.bootstrap, [(Topics.ATTEMPTS, attempt, attempt.headers())]))

    def reconcile(env: dict[str, str]) -> tuple[int, dict[str, object]]:
        result = tollgate("reconcile", "--kafka", platform.bootstrap, "--account", tenant.account_id, "--grace",
                          "0", "--json", "--db", f"billing={platform.database_url('billing')}",
                          "--db", f"metering={platform.database_url('metering')}", env=env)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)

    for _ in range(20):  # ingress's and the router's outboxes may still be publishing the genuine events
        status, report = reconcile(operator_env(platform))
        if status == 0:
            break
        time.sleep(1.0)
    assert status == 0, report
    assert f"{rid}:1" in {r["event_id"] for r in report["refused"]}  # type: ignore[attr-defined]
    # Unchecked, the forged attempt is a gap: "the provider served it, nobody was billed".
    status, unchecked = reconcile(_no_secret("development"))
    assert status == 1
    assert {(g["kind"], g["id"]) for g in unchecked["gaps"]} == {("attempt_without_usage", rid)}  # type: ignore
