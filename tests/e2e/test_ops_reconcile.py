"""``tollgate reconcile`` against the running platform: a real account's trail is complete; every kind of gap made
in copies of the live databases, or by a successful attempt nobody billed (published to the real broker), is
listed by its id, exit 1.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from tollgate.events.v1 import attempts_pb2, billing_pb2
from tollgate_common.event_auth import EventSigner
from tollgate_common.events import Topics, envelope_for
from tollgate_common.internal_auth import InternalKeys
from tollgate_common.kafka import make_producer
from tollgate_dev.platform import Platform

from .tenant import Tenant
from .test_ops import copy_sqlite, tollgate
from .test_request_path import run_completions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def reconcile(platform: Platform, account: str, billing: str | None = None, metering: str | None = None,
              *extra: str) -> tuple[int, dict[str, Any]]:
    result = tollgate("reconcile", "--kafka", platform.bootstrap, "--account", account, "--grace", "0", "--json",
                      "--db", f"billing={billing or platform.database_url('billing')}",
                      "--db", f"metering={metering or platform.database_url('metering')}", *extra, platform=platform)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def publish_attempt(platform: Platform, account: str, request_id: str) -> None:
    """What the router publishes after a provider answered, signed with the router's key as the router signs it:
    here for a request no usage event will ever close."""
    event = attempts_pb2.AttemptRecorded(request_id=request_id, account_id=account, attempt=1, model="gpt-4o-mini",
                                         provider="mock", outcome=attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
                                         http_status=200, started_at_unix_ms=1)
    env = envelope_for(event, id=f"{request_id}:1", service="router", subject=account)

    async def send() -> None:
        producer = make_producer(platform.bootstrap,
                                 signer=EventSigner("router", InternalKeys(platform.config.internal_secret)))
        await producer.start()
        try:
            await producer.send_and_wait(Topics.ATTEMPTS, env.data, key=account.encode(), headers=env.headers())
        finally:
            await producer.stop()

    asyncio.run(send())


def test_a_settled_account_is_complete_and_each_gap_is_named(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    tenant.settle()
    status, report = 1, {}
    for _ in range(20):  # ingress's and the router's outboxes may still be publishing the last events
        status, report = reconcile(platform, tenant.account_id)
        if status == 0 and report["successful_attempts"] == 2:
            break
    assert status == 0, report
    assert report["result"] == "complete" and report["gaps"] == []
    assert report["usage_events"] == report["rated"] == report["settled"] == report["successful_attempts"] == 2

    billing = tmp_path / "billing.db"
    metering = tmp_path / "metering.db"
    copy_sqlite(platform.database_url("billing"), billing)
    copy_sqlite(platform.database_url("metering"), metering)
    with sqlite3.connect(metering) as conn:
        first, second = (r for (r,) in conn.execute(
            "SELECT request_id FROM rated_usage WHERE account_id = ? ORDER BY occurred_at_unix_ms",
            (tenant.account_id,)))
        conn.execute("DELETE FROM rated_usage WHERE request_id = ?", (first,))
    with sqlite3.connect(billing) as conn:
        conn.execute("UPDATE holds SET status = 'open' WHERE hold_id = ?", (second,))
        # captured in full at its TTL and never corrected since (no late usage, no reconciliation from attempts)
        conn.execute("UPDATE holds SET status = 'expired', needs_reconciliation = 1, expires_at_unix_ms = 1 "
                     "WHERE hold_id = ?", (first,))
        (tx,) = conn.execute("SELECT transaction_id FROM ledger_transactions WHERE account_id = ? AND kind = "
                             "'usage_charge' LIMIT 1", (tenant.account_id,)).fetchone()
        conn.execute("INSERT INTO ledger_postings (transaction_id, ledger_account, amount_nanos) VALUES (?, ?, 7)",
                     (tx, "revenue:usage"))
        expired = envelope_for(billing_pb2.HoldExpired(hold_id=first, account_id=tenant.account_id),
                               id=f"hold.expired:{first}", service="billing", subject=tenant.account_id)
        conn.execute("INSERT INTO outbox (topic, key, event_id, headers, value) VALUES (?, ?, ?, ?, ?)",
                     (Topics.BILLING, tenant.account_id, expired.id,
                      json.dumps([[k, v.decode()] for k, v in expired.headers()]), expired.data))
    unbilled = f"req_unbilled_{uuid.uuid4().hex[:8]}"
    publish_attempt(platform, tenant.account_id, unbilled)

    status, report = reconcile(platform, tenant.account_id, f"sqlite:///{billing}", f"sqlite:///{metering}")
    assert status == 1 and report["result"] == "gaps"
    found = {(g["kind"], g["id"]) for g in report["gaps"]}
    assert ("usage_not_rated", first) in found
    assert ("usage_not_settled", second) in found
    assert ("wallet_held", f"wallet:{tenant.account_id}") in found  # an open hold the wallet does not hold
    assert ("unbalanced_transaction", tx) in found
    assert ("settled_more_than_once", first) in found
    assert ("attempt_without_usage", unbilled) in found
    assert ("hold_expired_unreconciled", first) in found
    assert all(g["account_id"] == tenant.account_id for g in report["gaps"])

    text = tollgate("reconcile", "--kafka", platform.bootstrap, "--account", tenant.account_id, "--grace", "0",
                    "--db", f"billing=sqlite:///{billing}", "--db", f"metering=sqlite:///{metering}",
                    platform=platform)
    assert text.returncode == 1 and f"usage_not_rated: 1\n    {first}" in text.stdout
    assert "RESULT: GAPS" in text.stdout

    # The live databases stayed as they were: the attempt is the only gap there.
    status, live = reconcile(platform, tenant.account_id)
    assert status == 1 and {(g["kind"], g["id"]) for g in live["gaps"]} == {("attempt_without_usage", unbilled)}


def test_reconcile_bad_usage_exits_2(platform: Platform) -> None:
    assert tollgate("reconcile", "--help").returncode == 0
    bad = tollgate("reconcile", "--grace", "-1", "--db", f"billing={platform.database_url('billing')}",
                   "--db", f"metering={platform.database_url('metering')}")
    assert bad.returncode == 2 and "--grace" in bad.stderr
    no_db = tollgate("reconcile", "--no-kafka", "--db", "billing=sqlite:///nowhere/b.db", "--db",
                     "metering=sqlite:///nowhere/m.db")
    assert no_db.returncode == 2 and "no SQLite database" in no_db.stderr
