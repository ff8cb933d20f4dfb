"""Outbox relay and DB-offset consumer against the real embedded broker and real databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import BigInteger, CheckConstraint, Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from tollgate.events.v1 import usage_pb2
from tollgate_common.db import create_engine, create_schema, messaging_tables, session_maker
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import DbOffsetConsumer, OutboxRelay, ensure_topics, make_producer, replay_topics
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.testing import fresh_postgres


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    b = EmbeddedBroker()
    bootstrap = b.start()
    asyncio.run(ensure_topics(bootstrap, Topics.ALL))
    yield bootstrap
    b.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/t.db", None
        return
    async with fresh_postgres() as db:
        yield db


def _event(i: int, account: str = "acct_1") -> Envelope:
    msg = usage_pb2.UsageRecorded(request_id=f"req_{i}", account_id=account)
    return envelope_for(msg, id=f"req_{i}", service="test", subject=account)


async def test_outbox_relay_publishes_in_order_and_consumer_applies_once(
    broker: str, database: tuple[str, str | None]
) -> None:
    url, schema = database
    md = MetaData()
    tables = messaging_tables(md, consumer=True)
    effects = Table("effects", md, Column("id", Integer, primary_key=True), Column("event_id", String(50)))
    engine = create_engine(url, schema=schema)
    await create_schema(engine, md, schema=schema)
    sessions = session_maker(engine)
    topic = Topics.USAGE

    # A producer-side service writes 20 events to its outbox; the relay publishes them.
    async with sessions.begin() as s:
        for i in range(20):
            await tables.add_to_outbox(s, topic, "acct_1", _event(i))
    producer = make_producer(broker)
    await producer.start()
    relay = OutboxRelay(sessions, tables, producer)
    assert await relay.publish_pending() == 20
    assert await relay.publish_pending() == 0
    # A crash between send and mark re-publishes: simulate by publishing the same events again.
    for i in range(5):
        env = _event(i)
        await producer.send_and_wait(topic, env.data, key=b"acct_1", headers=env.headers())
    await producer.stop()

    # The consumer applies each event exactly once, offsets stored with the effect.
    async def handler(session: AsyncSession, env: Envelope, _record: object) -> None:
        await session.execute(insert(effects).values(event_id=env.id))

    group = f"g-{schema or 'sqlite'}-{id(engine)}"
    consumer = DbOffsetConsumer(bootstrap=broker, topics=[topic], group_id=group, sessions=sessions,
                                tables=tables, handler=handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(100):
        async with sessions() as s:
            n = (await s.execute(select(func.count()).select_from(effects))).scalar_one()
        if n >= 20:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the 5 duplicates arrive after the originals
    stop.set()
    await task
    async with sessions() as s:
        ids = [r.event_id for r in await s.execute(select(effects.c.event_id).order_by(effects.c.id))]
        offsets = await tables.load_offsets(s, group)
    assert sorted(ids) == sorted(f"req_{i}" for i in range(20))
    assert sum(offsets.values()) >= 25  # past the duplicates too

    # Replay reads everything from the beginning without a group.
    seen: list[str] = []

    async def collect(items: list[tuple[Envelope, object]]) -> None:
        seen.extend(env.id for env, _ in items)

    count = await replay_topics(broker, [topic], collect)
    assert count >= 25 and {f"req_{i}" for i in range(20)} <= set(seen)
    await engine.dispose()


async def test_consumer_rolls_back_a_failing_batch_and_retries_it(broker: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    md = MetaData()
    tables = messaging_tables(md, consumer=True)
    effects = Table("effects", md, Column("event_id", String(50), primary_key=True))
    engine = create_engine(f"sqlite:///{tmp_path}/r.db")
    await create_schema(engine, md)
    sessions = session_maker(engine)
    topic = "test.retry.v1"
    await ensure_topics(broker, [topic], partitions=1)
    producer = make_producer(broker)
    await producer.start()
    for i in range(3):
        env = _event(i)
        await producer.send_and_wait(topic, env.data, key=b"a", headers=env.headers())
    await producer.stop()

    failures = {"left": 2}

    async def flaky(session: AsyncSession, env: Envelope, _record: object) -> None:
        await session.execute(insert(effects).values(event_id=env.id))
        if env.id == "req_1" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database hiccup")

    consumer = DbOffsetConsumer(bootstrap=broker, topics=[topic], group_id="retry", sessions=sessions,
                                tables=tables, handler=flaky)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(100):
        async with sessions() as s:
            n = (await s.execute(select(func.count()).select_from(effects))).scalar_one()
        if n == 3:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    async with sessions() as s:
        assert sorted(r.event_id for r in await s.execute(select(effects.c.event_id))) == ["req_0", "req_1", "req_2"]
    assert failures["left"] == 0
    await engine.dispose()


class TestPoisonRecords:
    """A record that cannot be applied is parked and its partition goes on (issue 12), on both databases."""

    @pytest.fixture(params=["sqlite", "postgres"])
    async def db(self, request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
        if request.param == "sqlite":
            yield f"sqlite:///{tmp_path}/p.db", None
            return
        async with fresh_postgres() as found:
            yield found

    async def test_a_poison_record_is_parked_and_the_records_after_it_are_applied_once(
        self, broker: str, db: tuple[str, str | None]
    ) -> None:
        url, schema = db
        md = MetaData()
        tables = messaging_tables(md, consumer=True)
        effects = Table("effects", md, Column("event_id", String(50), primary_key=True),
                        Column("tokens", BigInteger, nullable=False), CheckConstraint("tokens >= 0"))
        engine = create_engine(url, schema=schema)
        await create_schema(engine, md, schema=schema)
        sessions = session_maker(engine)
        topic = f"test.poison.{schema or 'sqlite'}.v1"
        await ensure_topics(broker, [topic], partitions=1)

        def usage(i: int, tokens: int) -> Envelope:
            msg = usage_pb2.UsageRecorded(request_id=f"req_{i}", account_id="a",
                                          usage=usage_pb2.TokenUsage(prompt_tokens=tokens))
            return envelope_for(msg, id=f"req_{i}", service="test", subject="a")

        # One partition: req_2 (refused by the table's constraint) and a non-CloudEvent between good records.
        producer = make_producer(broker)
        await producer.start()
        poison = usage(2, -987654321)
        for env in (usage(0, 5), usage(1, 6), poison, usage(3, 7)):
            await producer.send(topic, env.data, key=b"a", headers=env.headers())
        await producer.send(topic, b"not an event", key=b"a")
        await producer.send_and_wait(topic, usage(4, 8).data, key=b"a", headers=usage(4, 8).headers())
        await producer.send_and_wait(topic, poison.data, key=b"a", headers=poison.headers())  # republished
        await producer.stop()

        async def apply(session: AsyncSession, events: list[Envelope]) -> None:
            rows = []
            for env in events:
                msg = env.message()
                assert isinstance(msg, usage_pb2.UsageRecorded)
                rows.append({"event_id": env.id, "tokens": msg.usage.prompt_tokens})
            await session.execute(insert(effects), rows)

        # A group of its own per backend: Tansu holds a group's partitions until a member that just left times out.
        group = f"poison-{schema or 'sqlite'}"
        consumer = DbOffsetConsumer(bootstrap=broker, topics=[topic], group_id=group, sessions=sessions,
                                    tables=tables, batch_handler=apply, retry_pause_seconds=0.05)
        parked_before = _parked_metric(group)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            for _ in range(1200):  # a bound on a hang, not a timing assertion
                async with sessions() as s:
                    offsets = await tables.load_offsets(s, group)
                if offsets.get((topic, 0)) == 7:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
        assert tables.parked_events is not None
        async with sessions() as s:
            applied = dict((await s.execute(select(effects.c.event_id, effects.c.tokens))).all())
            parked = (await s.execute(select(tables.parked_events).order_by(tables.parked_events.c.offset))).all()
            offsets = await tables.load_offsets(s, group)
        assert offsets == {(topic, 0): 7}  # past everything: nothing blocks the partition
        assert applied == {"req_0": 5, "req_1": 6, "req_3": 7, "req_4": 8}
        assert [(p.offset, p.event_id, p.event_source) for p in parked] == [
            (2, "req_2", "//tollgate/test"), (4, "", ""), (6, "req_2", "//tollgate/test")]
        assert all(p.group_id == group and p.topic == topic and p.reason for p in parked)
        assert "CloudEvent" in parked[1].reason
        assert "987654321" not in " ".join(p.reason for p in parked)  # the payload stays out of the reason
        assert consumer.parked == 3 and consumer.applied == 4
        assert _parked_metric(group) - parked_before == 3
        await engine.dispose()


def _parked_metric(group: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("tollgate_consumer_parked_events_total", {"group": group}) or 0.0


async def test_consumer_lingers_so_records_arriving_just_after_a_poll_share_its_transaction(
    broker: str, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    """A record produced after the poll that returned the first one goes into the same batch (one transaction)
    when it arrives within ``linger_seconds``; with no linger the first record is applied alone."""
    md = MetaData()
    tables = messaging_tables(md, consumer=True)
    engine = create_engine(f"sqlite:///{tmp_path}/l.db")
    await create_schema(engine, md)
    sessions = session_maker(engine)
    topic = "test.linger.v1"
    await ensure_topics(broker, [topic], partitions=1)
    batches: list[list[str]] = []
    polled = asyncio.Event()

    async def apply(_session: AsyncSession, events: list[Envelope]) -> None:
        batches.append([env.id for env in events])

    class Observed(DbOffsetConsumer):
        async def _linger(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> dict[
            TopicPartition, list[ConsumerRecord]
        ]:
            polled.set()  # a poll returned records: the linger starts now
            return await super()._linger(batches)

    # The broker answers a fetch that finds nothing after up to 0.5 s: a 3 s linger leaves room for a loaded box.
    consumer = Observed(bootstrap=broker, topics=[topic], group_id="linger", sessions=sessions, tables=tables,
                        batch_handler=apply, linger_seconds=3.0)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    producer = make_producer(broker)
    await producer.start()
    first, second = _event(1), _event(2)
    await producer.send_and_wait(topic, first.data, key=b"a", headers=first.headers())
    await asyncio.wait_for(polled.wait(), 30)
    await producer.send_and_wait(topic, second.data, key=b"a", headers=second.headers())
    await producer.stop()
    for _ in range(200):
        if batches:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # a second batch, if the records were split, lands meanwhile
    stop.set()
    await task
    assert batches == [["req_1", "req_2"]]
    await engine.dispose()
