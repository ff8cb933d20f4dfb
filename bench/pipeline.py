"""The event pipeline's pace: usage events applied per second by metering's and billing's consumers.

A burst of realistic events (several accounts, keys, models, projects, tags; one hold per request in billing) is
produced straight onto the topic of a real embedded broker; then the service's own consumer (``UsageConsumer``,
the class the service runs, with its relay publishing what it wrote) drains it into a fresh SQLite file or
PostgreSQL schema. Printed per service and database: events/s applied (from the first to the last commit), the lag
after the burst (how long the last event waited behind the burst, from the moment the consumer started), and how
long the relay took to publish the consumer's outbox. Prints figures; asserts nothing.

    .venv/bin/python -m bench.pipeline [--events 30000] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import usage_pb2
from tollgate_common.db import session_maker
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import DbOffsetConsumer, OutboxRelay, ensure_topics, make_producer
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.testing import local_postgres_url, postgres_schema

MODELS = ("gpt-4o-mini", "gpt-4o", "deepseek-chat", "claude-3-5-haiku", "gemini-2.0-flash")
ACCOUNTS = 20
KEYS_PER_ACCOUNT = 3
PROJECTS = ("", "search", "support", "batch")
#: 2026-11-20T12:00:00Z, inside the demo price book's validity.
NOON = 1_795_176_000_000


@dataclass(frozen=True)
class Request:
    request_id: str
    account: str
    key: str
    model: str
    project: str
    prompt: int
    completion: int
    at: int


def requests(n: int, seed: int = 7) -> list[Request]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        a = rnd.randrange(ACCOUNTS)
        out.append(Request(
            request_id=f"req_{seed}_{i:07d}",
            account=f"acct_{a:03d}",
            key=f"key_{a:03d}_{rnd.randrange(KEYS_PER_ACCOUNT)}",
            model=rnd.choice(MODELS),
            project=rnd.choice(PROJECTS),
            prompt=rnd.randrange(10, 4000),
            completion=rnd.randrange(1, 1000),
            at=NOON + i,
        ))
    return out


def recorded(r: Request) -> Envelope:
    msg = usage_pb2.UsageRecorded(
        request_id=r.request_id, account_id=r.account, key_id=r.key, hold_id=r.request_id, model=r.model,
        provider="openai", upstream_model=r.model, upstream_request_id=f"chatcmpl-{r.request_id}",
        usage=usage_pb2.TokenUsage(prompt_tokens=r.prompt, completion_tokens=r.completion,
                                   total_tokens=r.prompt + r.completion),
        outcome=usage_pb2.REQUEST_OUTCOME_SUCCEEDED, streamed=r.completion % 2 == 0,
        occurred_at_unix_ms=r.at, team="core", project=r.project, tags={"env": "prod", "feature": r.project or "x"},
    )
    return envelope_for(msg, id=r.request_id, service="ingress", subject=r.account, at_unix_ms=r.at)


def rated(r: Request) -> Envelope:
    price = r.prompt * 180 + r.completion * 720
    msg = usage_pb2.UsageRated(
        request_id=r.request_id, account_id=r.account, key_id=r.key, hold_id=r.request_id, model=r.model,
        provider="openai", currency="USD", upstream_cost_nanos=price * 5 // 6, resale_price_nanos=price,
        usage=usage_pb2.TokenUsage(prompt_tokens=r.prompt, completion_tokens=r.completion,
                                   total_tokens=r.prompt + r.completion),
        price_book_version="demo-2026-11", markup_bps=2000, occurred_at_unix_ms=r.at, rated_at_unix_ms=r.at + 5,
        team="core", project=r.project,
    )
    return envelope_for(msg, id=r.request_id, service="metering", subject=r.account, at_unix_ms=r.at + 5)


async def produce(bootstrap: str, topic: str, envs: list[Envelope]) -> float:
    """Send the burst (batched: linger, many in flight); returns seconds taken."""
    producer = make_producer(bootstrap, linger_ms=5)
    await producer.start()
    start = time.perf_counter()
    try:
        for i in range(0, len(envs), 2000):
            futures = [await producer.send(topic, env.data, key=env.subject.encode(), headers=env.headers())
                       for env in envs[i:i + 2000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - start


@dataclass
class Result:
    events: int
    applied_per_s: float
    lag_s: float
    relay_s: float
    #: CPU µs of the consuming process per applied event (between the first and the last commit).
    cpu_us: float = float("nan")


async def drain(consumer: DbOffsetConsumer, relay: OutboxRelay | None, engine: AsyncEngine, total: int,
                timeout: float) -> Result:
    """Run ``consumer`` (and ``relay``) until the stored offsets cover ``total`` records and the outbox is empty."""
    stop = asyncio.Event()
    commits: list[float] = []
    cpu_at_commits: list[float] = []
    inner = consumer.after_commit

    def on_commit() -> None:
        commits.append(time.perf_counter())
        cpu_at_commits.append(time.process_time())
        if inner is not None:
            inner()

    consumer.after_commit = on_commit
    started = time.perf_counter()
    tasks = [asyncio.create_task(consumer.run(stop))]
    if relay is not None:
        tasks.append(asyncio.create_task(relay.run(stop)))
    sessions = session_maker(engine)
    t = consumer.tables
    applied_at = relay_done_at = None
    deadline = started + timeout
    try:
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            async with sessions() as s:
                if applied_at is None:
                    stored = (await s.execute(select(func.coalesce(func.sum(t.consumer_offsets.c.next_offset), 0))
                                              .where(t.consumer_offsets.c.group_id == consumer.group_id))
                              ).scalar_one()
                    if stored >= total:
                        applied_at = commits[-1] if commits else time.perf_counter()
                if applied_at is not None:
                    pending = (await s.execute(select(func.count()).select_from(t.outbox)
                                               .where(t.outbox.c.published_at_unix_ms.is_(None)))).scalar_one()
                    if pending == 0 or relay is None:
                        relay_done_at = time.perf_counter()
                        break
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    if applied_at is None or relay_done_at is None or not commits:
        raise RuntimeError(f"the consumer did not drain {total} events in {timeout:.0f} s "
                           f"(applied {consumer.applied})")
    first = commits[0]
    span = max(applied_at - first, 1e-6)
    # Events in the first commit are not inside the measured span: rate over the rest.
    rest = consumer.applied - consumer_first_batch(consumer)
    per_s = rest / span if len(commits) > 1 else float("nan")
    # CPU of this process (consumer and relay; the broker is another process) over the same span: on a shared,
    # loaded machine wall-clock rates move with the neighbours, CPU per event much less.
    last = commits.index(applied_at) if applied_at in commits else len(commits) - 1
    cpu_us = (cpu_at_commits[last] - cpu_at_commits[0]) / rest * 1e6 if len(commits) > 1 and rest else float("nan")
    return Result(consumer.applied, per_s, applied_at - started, relay_done_at - applied_at, cpu_us)


def consumer_first_batch(consumer: DbOffsetConsumer) -> int:
    return getattr(consumer, "_bench_first_batch", 0)


def _count_first_batch(consumer: DbOffsetConsumer) -> None:
    """Remember how many events the first committed batch applied (excluded from the rate)."""
    inner = consumer.after_commit

    def first() -> None:
        if not hasattr(consumer, "_bench_first_batch"):
            consumer._bench_first_batch = consumer.applied  # type: ignore[attr-defined]
        if inner is not None:
            inner()

    consumer.after_commit = first


@contextlib.asynccontextmanager
async def database(kind: str, tmp: Path, name: str) -> AsyncIterator[tuple[str, str | None]]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/{name}.db", None
        return
    url = local_postgres_url()
    if url is None:
        raise RuntimeError("PostgreSQL does not answer")
    async with postgres_schema(url) as schema:
        yield url, schema


async def bench_metering(bootstrap: str, topic: str, url: str, schema: str | None, reqs: list[Request],
                         timeout: float) -> Result:
    from tollgate_metering.application import Metering
    from tollgate_metering.consumer import UsageConsumer
    from tollgate_metering.domain import DEMO_PRICE_BOOK
    from tollgate_metering.repository import open_database
    from tollgate_metering.tables import messaging

    engine = await open_database(url, schema or "metering")
    try:
        metering = Metering(session_maker(engine))
        await metering.register_price_book(DEMO_PRICE_BOOK)
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            relay = OutboxRelay(metering.sessions, messaging, producer, keep=False,
                                write_turn=metering.write_turn)
            consumer = UsageConsumer(metering, bootstrap, after_commit=relay.notify)
            consumer.topics = [topic]  # this run's own topic: each run starts from an empty one
            _count_first_batch(consumer)
            return await drain(consumer, relay, engine, len(reqs), timeout)
        finally:
            await producer.stop()
    finally:
        await engine.dispose()


async def bench_billing(bootstrap: str, topic: str, url: str, schema: str | None, reqs: list[Request],
                        timeout: float) -> Result:
    from tollgate_billing.application import Billing
    from tollgate_billing.consumer import UsageConsumer
    from tollgate_billing.tables import messaging
    from tollgate_common.db import create_engine
    from tollgate_common.migrations import migrate

    engine = create_engine(url, schema=schema)
    await migrate(engine, "tollgate_billing", schema=schema)
    try:
        billing = Billing(engine, prices=_NoPrices())
        await _seed_billing(engine, reqs)
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            sessions = session_maker(engine)
            relay = OutboxRelay(sessions, messaging, producer, keep=True, write_turn=billing.sqlite_turn)
            consumer = UsageConsumer(bootstrap, sessions, billing, after_commit=relay.notify)
            consumer.topics = [topic]
            _count_first_batch(consumer)
            return await drain(consumer, relay, engine, len(reqs), timeout)
        finally:
            await producer.stop()
    finally:
        await engine.dispose()


class _NoPrices:
    """Billing's price source; the consumer never asks it (holds carry their amounts)."""

    def current(self) -> None:
        return None


async def _seed_billing(engine: AsyncEngine, reqs: list[Request]) -> None:
    """Accounts with credit, their keys, and an open hold per request, written through billing's own projections
    (``record_many``), as Authorize would have left them."""
    from tollgate_billing import domain as d
    from tollgate_billing import repository as r

    now = int(time.time() * 1000)
    accounts = sorted({q.account for q in reqs})
    keys = sorted({(q.account, q.key) for q in reqs})
    setup: list[Message] = [d.account_created(a, a, "USD", now) for a in accounts]
    setup += [d.api_key_created(key_id=k, account_id=a, key_hash=f"h-{k}", prefix="tg-", label="bench",
                                has_limit=False, limit_nanos=0, allowed_models=(), team="core", project="",
                                rate_limit_rpm=0, at_unix_ms=now) for a, k in keys]
    setup += [d.credits_added(a, 10**15, f"seed-{a}", f"txn-seed-{a}", "bench", now) for a in accounts]
    async with engine.begin() as conn:
        await r.record_many(conn, setup)
    grants = {k: d.ApiKeyGrant(key_id=k, account_id=a, currency="USD", allowed_models=frozenset(), has_limit=False,
                               limit_nanos=0, team="core", project="", rate_limit_rpm=0) for a, k in keys}
    for i in range(0, len(reqs), 2000):
        holds = [d.hold_placed(grants[q.key], q.request_id, q.model, q.prompt * 180 + 1000 * 720, now, 3600)
                 for q in reqs[i:i + 2000]]
        async with engine.begin() as conn:
            await r.record_many(conn, holds)


Runner = Callable[[str, str, str, str | None, list[Request], float], Awaitable[Result]]


async def run(events: int, databases: list[str], timeout: float,
              services: list[str] | None = None) -> None:
    broker = EmbeddedBroker()
    bootstrap = broker.start()
    try:
        print(f"event pipeline: {events} usage events per run, {ACCOUNTS} accounts, {len(MODELS)} models, "
              f"real embedded broker (3 partitions)")
        print(f"{'':30} {'events/s':>10} {'lag after burst':>16} {'relay after':>12} {'CPU µs/event':>13}")
        with tempfile.TemporaryDirectory(prefix="tollgate-bench-pipeline-") as tmp:
            for db in databases:
                for name, topic, make, runner in (
                    ("metering", Topics.USAGE, recorded, bench_metering),
                    ("billing", Topics.USAGE_RATED, rated, bench_billing),
                ):
                    if services is not None and name not in services:
                        continue
                    run_topic = f"{topic}.bench.{name}.{db}"
                    reqs = requests(events, seed=hash((name, db)) & 0xFFFF)
                    await ensure_topics(bootstrap, [run_topic], partitions=3)
                    produced = await produce(bootstrap, run_topic, [make(q) for q in reqs])
                    async with database(db, Path(tmp), f"{name}-{db}") as (url, schema):
                        result = await runner(bootstrap, run_topic, url, schema, reqs, timeout)
                    print(f"{name + ' on ' + db:30} {result.applied_per_s:10,.0f} {result.lag_s:14.2f} s "
                          f"{result.relay_s:10.2f} s {result.cpu_us:13,.0f}   (burst produced in {produced:.2f} s)")
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--services", default="metering,billing", help="which consumers to run")
    args = parser.parse_args(argv)
    dbs = [d for d in args.databases.split(",") if d]
    if "postgres" in dbs and local_postgres_url() is None:
        print("PostgreSQL does not answer; SQLite only")
        dbs = [d for d in dbs if d != "postgres"]
    asyncio.run(run(args.events, dbs, args.timeout, [x for x in args.services.split(",") if x]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
