"""The live path end to end with the real embedded broker: UsageRecorded in, UsageRated out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import ensure_topics, make_producer
from tollgate_dev.testing import fresh_postgres
from tollgate_metering.app import MeteringApp
from tollgate_metering.config import Settings
from tollgate_metering.tables import aggregates, archive, messaging, rated_usage
from tollgate_metering.validation import TRUNCATED_TAG, shorten

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
Rated = tuple[Any, Envelope]


def _settings(bootstrap: str, db: Path) -> Settings:
    return Settings.from_env({
        "METERING_GRPC_HOST": "127.0.0.1",
        "METERING_GRPC_PORT": "0",
        "METERING_DATABASE_URL": f"sqlite:///{db}",
        "METERING_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    })


@pytest.fixture
async def app(broker: str, tmp_path: Path) -> AsyncIterator[MeteringApp]:
    app = MeteringApp(_settings(broker, tmp_path / "metering.db"))
    await app.start()
    yield app
    await app.stop()


async def publish(bootstrap: str, *envs: Envelope) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for env in envs:
            await producer.send_and_wait(Topics.USAGE, env.data, key=env.subject.encode(), headers=env.headers())
    finally:
        await producer.stop()


async def read_rated(bootstrap: str, done: Callable[[list[Rated]], bool], timeout: float = 60.0) -> list[Rated]:
    """Every message on tollgate.usage.rated.v1 from the beginning, until ``done`` says enough (or a deadline)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    seen: list[Rated] = []
    try:
        await consumer.topics()
        parts = [TopicPartition(Topics.USAGE_RATED, p)
                 for p in sorted(consumer.partitions_for_topic(Topics.USAGE_RATED) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout
        while not done(seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching UsageRated after {timeout}s; saw {[e.id for _, e in seen]}")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend((r, Envelope.from_kafka(r.headers, r.value)) for r in records)
    finally:
        await consumer.stop()
    return seen


def _has(*ids: str) -> Callable[[list[Rated]], bool]:
    return lambda seen: set(ids) <= {env.id for _, env in seen}


async def _count(app: MeteringApp, table: Any, *where: Any) -> int:
    assert app.metering is not None
    async with app.metering.sessions() as s:
        return int((await s.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def test_usage_recorded_becomes_usage_rated_with_the_right_amounts_and_cloudevents_headers(
    app: MeteringApp, broker: str, make_usage: Any
) -> None:
    env = make_usage("req_e2e_1", account="acc_e2e", key="key_e2e", model="claude-3-5-haiku", prompt=3000,
                     completion=700, cached=200, team="research", project="atlas", tags={"feature": "summaries"},
                     outcome=usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED)
    incoming_trace = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    await publish(broker, dataclasses.replace(env, traceparent=incoming_trace))

    seen = await read_rated(broker, _has("req_e2e_1"))
    [(record, out)] = [(r, e) for r, e in seen if e.id == "req_e2e_1"]
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == "req_e2e_1"
    assert headers["ce_source"] == "//tollgate/metering"
    assert headers["ce_type"] == "tollgate.usage.v1.usage.rated"
    assert headers["ce_subject"] == "acc_e2e"
    assert headers["ce_time"].endswith("Z")
    assert headers["traceparent"].split("-")[1] == TRACE_ID  # the trace continues from ingress
    assert record.key == b"acc_e2e"

    msg = out.message()
    assert isinstance(msg, usage_pb2.UsageRated)
    cost = 2800 * 800 + 200 * 80 + 700 * 4000  # the 200 cached prompt tokens at the cache-read price
    assert (msg.upstream_cost_nanos, msg.resale_price_nanos) == (cost, cost * 12 // 10) == (5_056_000, 6_067_200)
    assert (msg.currency, msg.price_book_version, msg.markup_bps) == ("USD", "demo-embed-2026-12", 2000)
    assert (msg.input_price_nanos, msg.output_price_nanos) == (800, 4000)
    assert (msg.account_id, msg.key_id, msg.hold_id, msg.model) == ("acc_e2e", "key_e2e", "req_e2e_1",
                                                                    "claude-3-5-haiku")
    assert (msg.team, msg.project, dict(msg.tags)) == ("research", "atlas", {"feature": "summaries"})
    assert msg.outcome == usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED
    assert (msg.usage.prompt_tokens, msg.usage.completion_tokens, msg.usage.cached_prompt_tokens) == (3000, 700, 200)
    assert msg.occurred_at_unix_ms == env.message().occurred_at_unix_ms

    assert app.metering is not None
    [summary] = await app.metering.usage_summary("acc_e2e")
    assert (summary.requests, summary.resale_price_nanos) == (1, 6_067_200)


async def test_a_duplicate_usage_recorded_is_rated_once_also_after_the_broker_forgot_everything(
    broker: str, start_broker: Callable[[], str], tmp_path: Path, make_usage: Any
) -> None:
    dup = make_usage("req_dup", account="acc_dup")
    app = MeteringApp(_settings(broker, tmp_path / "metering.db"))
    await app.start()
    try:
        await publish(broker, dup, dup, make_usage("req_marker_1", account="acc_dup"), dup)
        # Same key, same partition, outbox published in order: once the marker is out, so is all of req_dup's.
        seen = await read_rated(broker, _has("req_marker_1"))
        assert [e.id for _, e in seen].count("req_dup") == 1
        assert await _count(app, rated_usage, rated_usage.c.request_id == "req_dup") == 1
        assert await _count(app, archive, archive.c.event_id == "req_dup") == 1
    finally:
        await app.stop()

    # The embedded broker restarts empty and ingress's outbox publishes req_dup again: metering's stored offsets
    # point past the new log's end, it reads from the beginning, and still rates req_dup only once.
    fresh = start_broker()
    await ensure_topics(fresh, [Topics.USAGE, Topics.USAGE_RATED])
    app = MeteringApp(_settings(fresh, tmp_path / "metering.db"))
    await app.start()
    try:
        await publish(fresh, dup, make_usage("req_marker_2", account="acc_dup"))
        seen = await read_rated(fresh, _has("req_marker_2"))
        assert [e.id for _, e in seen] == ["req_marker_2"]
        assert await _count(app, rated_usage, rated_usage.c.request_id == "req_dup") == 1
        assert await _count(app, aggregates, aggregates.c.account_id == "acc_dup") == 1
        assert app.metering is not None
        [row] = await app.metering.usage_summary("acc_dup")
        assert row.requests == 3  # req_dup, req_marker_1, req_marker_2
    finally:
        await app.stop()


class TestPoisonUsage:
    """Issue 12: an upstream request id longer than its column (201 characters) made PostgreSQL refuse the whole
    batch, which was read again forever: metering stopped rating for every account on that partition. Every value
    is now checked against its column first (``tollgate_metering.validation``), on both databases alike."""

    @pytest.fixture(params=["sqlite", "postgres"])
    async def poison_app(self, request: pytest.FixtureRequest, broker: str,
                         tmp_path: Path) -> AsyncIterator[MeteringApp]:
        env = {"METERING_GRPC_HOST": "127.0.0.1", "METERING_GRPC_PORT": "0",
               "METERING_KAFKA_BOOTSTRAP_SERVERS": broker}
        async with contextlib.AsyncExitStack() as stack:
            if request.param == "sqlite":
                env["METERING_DATABASE_URL"] = f"sqlite:///{tmp_path}/metering.db"
            else:
                url, schema = await stack.enter_async_context(fresh_postgres())
                env |= {"METERING_DATABASE_URL": url, "METERING_DATABASE_SCHEMA": schema}
            app = MeteringApp(Settings.from_env(env))
            await app.start()
            try:
                yield app
            finally:
                await app.stop()

    async def _parked(self, app: MeteringApp) -> dict[str, str]:
        parked = messaging.parked_events
        assert parked is not None and app.metering is not None
        async with app.metering.sessions() as s:
            rows = (await s.execute(select(parked.c.event_id, parked.c.topic, parked.c.reason))).all()
        assert {r.topic for r in rows} <= {Topics.USAGE}
        return {r.event_id: r.reason for r in rows}

    async def test_an_over_long_upstream_request_id_is_shortened_noted_and_rated(
        self, poison_app: MeteringApp, broker: str, make_usage: Any
    ) -> None:
        bad = make_usage("req_long", account="acc_p")
        msg = bad.message()
        long_id = "x" * 150 + "y" * 51
        msg.upstream_request_id = long_id
        bad = dataclasses.replace(bad, data=msg.SerializeToString())
        await publish(broker, make_usage("req_before", account="acc_p"), bad,
                      make_usage("req_after", account="acc_p"))

        seen = await read_rated(broker, _has("req_before", "req_long", "req_after"))
        [out] = [e.message() for _, e in seen if e.id == "req_long"]
        assert isinstance(out, usage_pb2.UsageRated)
        assert out.resale_price_nanos > 0 and out.tags[TRUNCATED_TAG] == "upstream_request_id"
        assert await self._parked(poison_app) == {}
        assert poison_app.metering is not None
        async with poison_app.metering.sessions() as s:
            stored = (await s.execute(select(rated_usage.c.upstream_request_id, rated_usage.c.tags)
                                      .where(rated_usage.c.request_id == "req_long"))).one()
            original = (await s.execute(select(archive.c.data).where(archive.c.event_id == "req_long"))).scalar_one()
        # A prefix and a hash of the whole value: 200 characters, distinct for distinct values.
        assert len(stored.upstream_request_id) == 200 and stored.upstream_request_id.startswith("x" * 150 + "y")
        assert stored.upstream_request_id == shorten(long_id, 200) != shorten(long_id + "z", 200)
        assert TRUNCATED_TAG in stored.tags
        assert usage_pb2.UsageRecorded.FromString(original).upstream_request_id == long_id  # the archive: whole

    async def test_values_that_do_not_fit_their_column_are_parked_and_the_partition_goes_on(
        self, poison_app: MeteringApp, broker: str, make_usage: Any
    ) -> None:
        def altered(event_id: str, change: Callable[[usage_pb2.UsageRecorded], None]) -> Envelope:
            env = make_usage(event_id, account="acc_p")
            msg = env.message()
            assert isinstance(msg, usage_pb2.UsageRecorded)
            change(msg)
            return dataclasses.replace(env, data=msg.SerializeToString())

        def set_usage(**counts: int) -> Callable[[usage_pb2.UsageRecorded], None]:
            def change(msg: usage_pb2.UsageRecorded) -> None:
                for name, value in counts.items():
                    setattr(msg.usage, name, value)
            return change

        bad = {
            "neg_cached": altered("neg_cached", set_usage(cached_prompt_tokens=-1)),
            "neg_prompt": altered("neg_prompt", set_usage(prompt_tokens=-5)),
            "huge_prompt": altered("huge_prompt", set_usage(prompt_tokens=2**63 - 1)),  # the amount overflows
            "long_request": altered("long_request", lambda m: setattr(m, "request_id", "r" * 201)),
            "long_key": altered("long_key", lambda m: setattr(m, "key_id", "k" * 201)),
            "far_future": altered("far_future", lambda m: setattr(m, "occurred_at_unix_ms", 2**62)),
            "long_subject": dataclasses.replace(make_usage("long_subject", account="acc_p"), subject="s" * 201),
        }
        await publish(broker, make_usage("req_before", account="acc_p"), *bad.values(),
                      make_usage("req_after", account="acc_p"))

        seen = await read_rated(broker, _has("req_before", "req_after"))
        assert {e.id for _, e in seen} == {"req_before", "req_after"}
        for _ in range(300):  # long_subject is keyed by its subject: maybe on another partition, parked later
            if len(parked := await self._parked(poison_app)) >= len(bad):
                break
            await asyncio.sleep(0.1)
        assert set(parked) == set(bad)
        assert "cached_prompt_tokens is negative" in parked["neg_cached"]
        assert "prompt_tokens is negative" in parked["neg_prompt"]
        assert "64-bit" in parked["huge_prompt"]
        assert "request_id is 201 characters" in parked["long_request"]
        assert "key_id is 201 characters" in parked["long_key"]
        assert "occurred_at_unix_ms" in parked["far_future"]
        assert "ce_subject is 201 characters" in parked["long_subject"]
        assert all("rrrr" not in reason and "kkkk" not in reason for reason in parked.values())
        assert await _count(poison_app, rated_usage) == 2
        assert poison_app.consumer is not None and poison_app.consumer.parked == len(bad)
        [summary] = await poison_app.metering.usage_summary("acc_p")  # type: ignore[union-attr]
        assert summary.requests == 2
