"""``tollgate replay`` where the other tests do not go: into and against PostgreSQL, from an offset and from a time.

Each expectation is computed here from the broker itself (every record of the topics, read with
``replay_topics``: partition, offset, Kafka timestamp, request id) or from the live databases, never from the
command's own output.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from tollgate.events.v1 import usage_pb2
from tollgate_common.event_auth import EventVerifier
from tollgate_common.events import Envelope, Topics
from tollgate_common.internal_auth import InternalKeys
from tollgate_common.kafka import replay_topics
from tollgate_dev.platform import Platform

from .tenant import Tenant
from .test_ops import tollgate
from .test_request_path import run_completions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

USAGE_RECORDED = "tollgate.usage.v1.usage.recorded"
#: Both carry a UsageRecorded and are rated once per request id (reconciled: metering's, from the attempts).
USAGE_TYPES = {USAGE_RECORDED, "tollgate.usage.v1.usage.reconciled"}


def replay(platform: Platform, *args: str) -> tuple[int, dict[str, Any]]:
    result = tollgate("replay", "--kafka", platform.bootstrap, "--json", *args, platform=platform)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def log(platform: Platform, topic: str) -> list[tuple[int, int, int, str, str]]:
    """Every genuine record of ``topic`` (the forged ones other tests leave are refused, as the command refuses
    them), sorted: (partition, offset, Kafka timestamp ms, event type, request id or event id)."""
    out: list[tuple[int, int, int, str, str]] = []

    async def on_batch(items: list[tuple[Envelope, ConsumerRecord[Any, Any]]]) -> None:
        for env, rec in items:
            key = usage_pb2.UsageRecorded.FromString(env.data).request_id if env.type in USAGE_TYPES else env.id
            out.append((rec.partition, rec.offset, rec.timestamp, env.type, key))

    verify = EventVerifier(InternalKeys(platform.config.internal_secret))
    asyncio.run(replay_topics(platform.bootstrap, [topic], on_batch, verify=verify))
    return sorted(out)


def rated_ids(url: str) -> set[str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return {r for (r,) in db.execute("SELECT request_id FROM rated_usage")}


def stable_logs(platform: Platform) -> tuple[list[Any], list[Any]]:
    """Both topics once nothing more arrives (the outboxes publish the last events a moment after settling)."""
    previous = None
    for _ in range(10):
        now = (log(platform, Topics.USAGE), log(platform, Topics.BILLING))
        if now == previous:
            return now
        previous = now
        time.sleep(1.0)
    raise AssertionError("the topics kept growing")


def test_replay_into_postgresql_reconciles_with_live_postgresql_and_twice_changes_nothing(
    pg_platform: Platform,
) -> None:
    tenant = Tenant.create(pg_platform)
    run_completions(tenant)
    balance = tenant.settle()
    live = pg_platform.database_url("billing")  # billing and metering share it, each in its own schema
    assert live.startswith("postgresql")
    prefix = f"rebuild_{uuid.uuid4().hex[:8]}_"

    status, report = 1, dict[str, Any]()
    for _ in range(6):  # the live outboxes may still be publishing the last events
        status, report = replay(pg_platform, "--into", live, "--into-schema-prefix", prefix,
                                "--compare-with", live)
        if status == 0:
            break
        time.sleep(1.0)
        prefix = f"rebuild_{uuid.uuid4().hex[:8]}_"
    assert status == 0, report
    assert [v.endswith(f"(schema {prefix}{s})") for s, v in sorted(report["into"].items())] == [True, True]
    assert report["result"] == "equal" and all(report["tables_equal"].values())
    figures = report["accounts"][tenant.account_id]
    assert figures["balance_nanos"] == balance["balance_nanos"]
    assert figures["usage[gpt-4o-mini].requests"] == 2

    again_status, again = replay(pg_platform, "--into", live, "--into-schema-prefix", prefix)
    assert again_status == 0
    assert again["billing"]["applied"] == 0 and again["billing"]["duplicates"] == again["billing"]["events_read"]
    assert again["metering"]["rated"] == 0
    assert again["accounts"] == report["accounts"]


def test_replay_from_an_offset_reads_exactly_the_records_at_or_after_it(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    tenant.settle()
    usage, billing = stable_logs(platform)
    # An offset inside the tenant's partition of the usage topic: its first usage event is before it, the second
    # at it. The same offset applies to every partition.
    requests = tenant_requests(platform, tenant)
    mine = sorted((o, p, rid) for p, o, _, t, rid in usage if t == USAGE_RECORDED and rid in requests)
    assert len(mine) == 2 and mine[0][1] == mine[1][1]  # one account, one partition
    (_, _, before), (offset, _, at) = mine

    into = f"sqlite:///{tmp_path}/from-offset.db"
    _, report = replay(platform, "--from-offset", str(offset), "--into", into)
    assert report["source"].endswith(f"from offset {offset}")
    want_usage = {rid for _, o, _, t, rid in usage if o >= offset and t in USAGE_TYPES}
    assert report["metering"]["events_read"] == sum(1 for _, o, *_ in usage if o >= offset)
    assert report["billing"]["events_read"] == sum(1 for _, o, *_ in billing if o >= offset)
    rebuilt = rated_ids(f"sqlite:///{tmp_path}/from-offset-metering.db")
    assert rebuilt == want_usage
    assert at in rebuilt and before not in rebuilt


def test_replay_from_a_time_reads_what_was_published_at_or_after_it(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "before"}])
    tenant.settle()
    time.sleep(1.5)
    cut = int(time.time() * 1000)
    time.sleep(0.5)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}])
    tenant.settle()
    usage, billing = stable_logs(platform)

    into = f"sqlite:///{tmp_path}/from-time.db"
    _, report = replay(platform, "--from-time", str(cut), "--into", into)
    assert report["source"].endswith(f"from time {cut} ms")
    assert report["metering"]["events_read"] == sum(1 for _, _, ts, *_ in usage if ts >= cut)
    assert report["billing"]["events_read"] == sum(1 for _, _, ts, *_ in billing if ts >= cut)
    rebuilt = rated_ids(f"sqlite:///{tmp_path}/from-time-metering.db")
    assert rebuilt == {rid for _, _, ts, t, rid in usage if ts >= cut and t in USAGE_TYPES}
    early, late = sorted(tenant_requests(platform, tenant, with_time=True))
    assert early[0] < cut <= late[0]
    assert late[1] in rebuilt and early[1] not in rebuilt
    # An ISO time works the same way.
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut // 1000)) + f".{cut % 1000:03d}Z"
    _, same = replay(platform, "--from-time", iso, "--into", f"sqlite:///{tmp_path}/from-iso.db")
    assert same["metering"]["events_read"] == report["metering"]["events_read"]


def tenant_requests(platform: Platform, tenant: Tenant, with_time: bool = False) -> Any:
    """The tenant's request ids from live metering (with their usage time when asked)."""
    with sqlite3.connect(platform.database_url("metering").removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT occurred_at_unix_ms, request_id FROM rated_usage WHERE account_id = ?",
                          (tenant.account_id,)).fetchall()
    return [(int(t), r) for t, r in rows] if with_time else {r for _, r in rows}
