"""``tollgate status``: is the platform up, and is its money pipeline keeping up?

- health: ingress's ``/readyz`` over HTTP and each gRPC service's standard health check (open to any caller);
- consumer lag per group and topic: the offsets each consumer keeps in its own database (``consumer_offsets``,
  committed with the state they produced) against the broker's end offsets;
- outbox backlogs: rows not yet published, and the age of the oldest, per service database given;
- holds: open ones (count, amount), open ones past their expiry (the sweeper is behind), and expired ones waiting
  for their late usage to reconcile.

Exit 1 when a service is not serving or does not answer; lag and backlogs are reported, not judged.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import MetaData, func, select
from tollgate_billing.tables import holds
from tollgate_common.db import messaging_tables
from tollgate_common.events import Topics
from tollgate_common.kafka_security import KafkaSecurity

from .audit import event_time_ms
from .progress import Bars
from .targets import Location, read_only_engine

__all__ = ["StatusReport", "status"]

#: The messaging tables are the same in every service's database (tollgate_common.db.messaging_tables).
_MESSAGING = messaging_tables(MetaData())


@dataclass
class StatusReport:
    health: dict[str, str] = field(default_factory=dict)
    #: group → topic → lag (messages), or None when the broker did not answer
    lag: dict[str, dict[str, int | None]] = field(default_factory=dict)
    outbox: dict[str, dict[str, int | None]] = field(default_factory=dict)
    holds: dict[str, int] = field(default_factory=dict)
    kafka: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(v == "SERVING" for v in self.health.values()) and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"result": "healthy" if self.healthy else "unhealthy", "health": self.health,
                "consumer_lag": self.lag, "outbox": self.outbox, "holds": self.holds, "kafka": self.kafka,
                "problems": self.problems}

    def render(self) -> str:
        out = ["health:"] + [f"  {name:<10} {state}" for name, state in self.health.items()]
        out.append(f"consumer lag (Kafka {self.kafka}):")
        for group, topics in self.lag.items():
            for topic, lag in topics.items():
                out.append(f"  {group:<10} {topic:<28} {'?' if lag is None else lag:>8} behind")
        out.append("outbox backlog:")
        for service, o in self.outbox.items():
            age = o.get("oldest_unpublished_age_ms")
            out.append(f"  {service:<10} {o['unpublished']:>8} unpublished"
                       + (f", oldest {age / 1000:.1f} s old" if age is not None else ""))
        h = self.holds
        if h:
            out.append(f"holds: {h['open']} open ({h['open_nanos'] / 1e9:,.6f} held), {h['open_past_expiry']} open "
                       f"past their expiry, {h['expired_awaiting_reconciliation']} expired awaiting reconciliation")
        out += [f"problem: {p}" for p in self.problems]
        out.append("RESULT: " + ("HEALTHY" if self.healthy else "UNHEALTHY"))
        return "\n".join(out)


async def _grpc_health(address: str) -> str:
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"


def _http_ready(url: str) -> str:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=3) as resp:
            return "SERVING" if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"NOT READY (HTTP {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        return f"UNREACHABLE ({getattr(exc, 'reason', exc)})"


async def _end_offsets(bootstrap: str, topics: set[str],
                       security: KafkaSecurity) -> dict[tuple[str, int], int] | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                request_timeout_ms=5000, **security.client_kwargs())
    try:
        await asyncio.wait_for(consumer.start(), 10)
        await consumer.topics()
        parts = [TopicPartition(t, p) for t in sorted(topics) for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(parts) if parts else {}
        return {(tp.topic, tp.partition): int(v) for tp, v in ends.items()}
    except Exception:  # a broker that does not answer: lag unknown, reported as such
        return None
    finally:
        await consumer.stop()


async def status(
    databases: dict[str, Location], *, grpc_addresses: dict[str, str], ingress_url: str | None, kafka: str,
    bars: Bars | None = None, security: KafkaSecurity | None = None,
) -> StatusReport:
    bars = bars or Bars(enabled=False)
    report = StatusReport(kafka=kafka)
    if ingress_url:
        report.health["ingress"] = await asyncio.to_thread(_http_ready, ingress_url)
    states = await asyncio.gather(*(_grpc_health(a) for a in grpc_addresses.values()))
    report.health.update(dict(zip(grpc_addresses, states, strict=True)))

    now = int(time.time() * 1000)
    committed: dict[str, dict[tuple[str, int], int]] = {}
    step = bars.task("reading the databases", len(databases))
    for service, location in databases.items():
        step(1)
        engine = read_only_engine(location)
        try:
            async with engine.connect() as conn:
                o, off = _MESSAGING.outbox.c, _MESSAGING.consumer_offsets.c
                unpublished = int((await conn.execute(
                    select(func.count()).select_from(_MESSAGING.outbox).where(o.published_at_unix_ms.is_(None))
                )).scalar_one())
                oldest = (await conn.execute(
                    select(o.headers).where(o.published_at_unix_ms.is_(None)).order_by(o.id).limit(1)
                )).scalar_one_or_none()
                stamp = dict(json.loads(oldest)).get("ce_time", "") if oldest else ""
                age = max(0, now - event_time_ms(stamp)) if stamp else None
                report.outbox[service] = {"unpublished": unpublished, "oldest_unpublished_age_ms": age}
                for group, topic, partition, next_offset in await conn.execute(
                        select(off.group_id, off.topic, off.partition, off.next_offset)):
                    committed.setdefault(group, {})[(topic, int(partition))] = int(next_offset)
                if service == "billing":
                    h = holds.c
                    row = (await conn.execute(select(
                        func.count().filter(h.status == "open"),
                        func.coalesce(func.sum(h.amount_nanos).filter(h.status == "open"), 0),
                        func.count().filter(h.status == "open", h.expires_at_unix_ms < now),
                        func.count().filter(h.status == "expired"),
                    ))).one()
                    report.holds = {"open": int(row[0]), "open_nanos": int(row[1]), "open_past_expiry": int(row[2]),
                                    "expired_awaiting_reconciliation": int(row[3])}
        finally:
            await engine.dispose()

    topics = {t for offsets in committed.values() for t, _ in offsets} or set(Topics.ALL)
    ends = await _end_offsets(kafka, topics, security or KafkaSecurity())
    if ends is None:
        report.problems.append(f"Kafka at {kafka} did not answer: consumer lag unknown")
    for group, offsets in sorted(committed.items()):
        per_topic: dict[str, int | None] = {}
        for (topic, partition), next_offset in sorted(offsets.items()):
            if ends is None:
                per_topic[topic] = None
                continue
            lag = max(0, ends.get((topic, partition), next_offset) - next_offset)
            per_topic[topic] = (per_topic.get(topic) or 0) + lag
        report.lag[group] = per_topic
    return report
