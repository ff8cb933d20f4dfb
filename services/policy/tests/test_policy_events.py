"""PolicyDecided: written to the outbox before Inspect answers (so a kill -9 loses none), relayed to the REAL
embedded Kafka broker, carrying counts, actions and keyed hashes of the matches but never the matched text."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import select
from tollgate.events.v1 import policy_pb2 as ev
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.db import create_engine
from tollgate_common.events import Envelope, Topics
from tollgate_common.grpc import wait_for_health
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.ports import free_port
from tollgate_dlp.domain import PolicySet, Verdict
from tollgate_dlp.state import PolicyState
from tollgate_policy import PolicyApp, Settings
from tollgate_policy.application import PolicyCache, PolicyService
from tollgate_policy.events import DecisionLog
from tollgate_policy.repository import PolicyRepository
from tollgate_policy.tables import messaging

CARD = "4111 1111 1111 1111"
EMAIL = "carol@example.com"
KEY = "test-hash-key"


@pytest.fixture
def broker() -> Iterator[str]:
    b = EmbeddedBroker()
    yield b.start()
    b.stop()


@pytest.fixture
async def app_with_kafka(tmp_path: Path, broker: str) -> AsyncIterator[PolicyApp]:
    running = PolicyApp(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'policy.db'}",
            grpc_host="127.0.0.1",
            grpc_port=0,
            kafka_bootstrap_servers=broker,
            hash_key=KEY,
        )
    )
    await running.start()
    yield running
    await running.stop()


async def decided(bootstrap: str, ids: set[str], timeout: float = 30.0) -> dict[str, tuple[Envelope, bytes, bytes]]:
    """The PolicyDecided records with these event ids, read from the start of the topic (bounded wait)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    consumer.subscribe([Topics.POLICY])
    await consumer.start()
    found: dict[str, tuple[Envelope, bytes, bytes]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not ids <= found.keys():
            if time.monotonic() > deadline:
                raise AssertionError(f"never published: {sorted(ids - found.keys())}")
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    env = Envelope.from_kafka(record.headers, record.value)
                    found[env.id] = (env, record.key, record.value)
    finally:
        await consumer.stop()
    return found


async def test_decisions_reach_kafka_with_counts_actions_and_keyed_hashes_only(
    app_with_kafka: PolicyApp, broker: str
) -> None:
    async with grpc.aio.insecure_channel(app_with_kafka.address) as channel:
        stub = pb_grpc.PolicyServiceStub(channel)
        await stub.PutScopePolicy(
            pb.PutScopePolicyRequest(account_id="acc_1", scope="account", document_json='{"rules": {"email": "flag"}}')
        )
        await stub.PutScopePolicy(
            pb.PutScopePolicyRequest(
                account_id="acc_1", scope="account", document_json='{"rules": {"email": "block"}}', shadow=True
            )
        )
        texts = [f"card {CARD} for {EMAIL}", f"again {CARD.replace(' ', '-')}"]
        request = pb.InspectRequest(
            request_id="req_1", account_id="acc_1", texts=texts, key_id="key_1", team="ml", model="gpt-4o-mini"
        )
        reply = await stub.Inspect(request)
        assert reply.verdict == pb.VERDICT_REDACT
        await stub.Inspect(
            pb.InspectRequest(
                request_id="req_1", account_id="acc_1", texts=["fine"], direction=pb.DIRECTION_RESPONSE, sequence=2
            )
        )
    found = await decided(broker, {"req_1:request", "req_1:request:shadow", "req_1:response:2"})

    env, key, raw = found["req_1:request"]
    assert key == b"acc_1" and env.type == "tollgate.policy.v1.policy.decided"
    event = env.message()
    assert isinstance(event, ev.PolicyDecided)
    assert (event.request_id, event.key_id, event.team, event.model) == ("req_1", "key_1", "ml", "gpt-4o-mini")
    assert (event.verdict, event.direction, event.shadow) == (
        ev.POLICY_VERDICT_REDACT,
        ev.POLICY_DIRECTION_REQUEST,
        False,
    )
    assert (event.policy_version, event.policy_scope) == (1, "account")
    assert event.scanned_bytes == sum(len(t.encode()) for t in texts)
    by_type = {f.type: f for f in event.findings}
    assert (by_type["payment_card"].count, by_type["payment_card"].action) == (2, "redact")
    assert (by_type["email"].count, by_type["email"].action) == (1, "flag")
    card_hash = hmac.new(KEY.encode(), CARD.replace(" ", "").encode(), hashlib.sha256).hexdigest()
    assert list(by_type["payment_card"].match_hashes) == [card_hash, card_hash]  # the same card, however grouped
    assert CARD.encode() not in raw and EMAIL.encode() not in raw and b"4111" not in raw

    shadow = found["req_1:request:shadow"][0].message()
    assert isinstance(shadow, ev.PolicyDecided)
    assert (shadow.shadow, shadow.verdict, shadow.policy_version) == (True, ev.POLICY_VERDICT_BLOCK, 2)

    response = found["req_1:response:2"][0].message()
    assert isinstance(response, ev.PolicyDecided)
    assert (response.direction, response.verdict, list(response.findings)) == (
        ev.POLICY_DIRECTION_RESPONSE,
        ev.POLICY_VERDICT_ALLOW,
        [],
    )


async def test_every_answered_inspect_survives_a_kill_9(tmp_path: Path) -> None:
    """Without Kafka the events wait in the outbox; each answered Inspect's event is already there when the
    process is killed without warning."""
    port = free_port()
    db = tmp_path / "policy.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICY_")}
    env.update(POLICY_GRPC_PORT=str(port), POLICY_DATABASE_URL=f"sqlite:///{db}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tollgate_policy", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for_health(f"127.0.0.1:{port}", timeout=30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PolicyServiceStub(channel)
            replies = await asyncio.gather(
                *(
                    stub.Inspect(pb.InspectRequest(request_id=f"req_{i}", account_id="acc_1", texts=[f"n {CARD}"]))
                    for i in range(40)
                )
            )
        assert {r.verdict for r in replies} == {pb.VERDICT_REDACT}
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    engine = create_engine(f"sqlite:///{db}")
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(messaging.outbox.c.event_id, messaging.outbox.c.headers))).all()
    finally:
        await engine.dispose()
    assert sorted(r.event_id for r in rows) == sorted(f"req_{i}:request" for i in range(40))
    assert all(["ce_type", "tollgate.policy.v1.policy.decided"] in json.loads(r.headers) for r in rows)


async def test_a_database_outage_keeps_decisions_in_memory_until_a_write_succeeds(tmp_path: Path) -> None:
    down = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/test", schema="policy")
    live = create_engine(f"sqlite:///{tmp_path / 'policy.db'}")
    live_repository = PolicyRepository(live)
    await live_repository.create_tables()
    decisions = DecisionLog(PolicyRepository(down, schema="policy"))
    service = PolicyService(PolicyRepository(down, schema="policy"), PolicyCache(30.0), decisions=decisions)
    service.cache.offer(PolicyState(PolicySet.default("acc_1")))
    try:
        result = await service.inspect("req_1", "acc_1", [CARD])  # answers although nothing could be written
        assert result.verdict is Verdict.REDACT
        decisions.repository = live_repository  # the database is back
        await service.inspect("req_2", "acc_1", [CARD])
        async with live.connect() as conn:
            ids = (await conn.execute(select(messaging.outbox.c.event_id).order_by(messaging.outbox.c.id))).all()
        assert [r.event_id for r in ids] == ["req_1:request", "req_2:request"]
    finally:
        await down.dispose()
        await live.dispose()


async def outbox_ids(engine_url: str) -> list[str]:
    engine = create_engine(engine_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(messaging.outbox.c.event_id).order_by(messaging.outbox.c.id))).all()
    finally:
        await engine.dispose()
    return [r.event_id for r in rows]


async def test_with_a_producer_connected_decisions_go_straight_to_the_topic_not_through_the_outbox(
    broker: str, tmp_path: Path
) -> None:
    from tollgate_common.kafka import make_producer

    url = f"sqlite:///{tmp_path / 'policy.db'}"
    engine = create_engine(url)
    repository = PolicyRepository(engine)
    await repository.create_tables()
    producer = make_producer(broker, client_id="test")
    await producer.start()
    decisions = DecisionLog(repository)  # no relay runs here: whatever reaches the outbox stays there
    decisions.kafka.producer = producer
    service = PolicyService(repository, PolicyCache(30.0), decisions=decisions)
    try:
        await asyncio.gather(*(service.inspect(f"d{i}", "acc_1", [f"n {CARD}"]) for i in range(20)))
        assert await outbox_ids(url) == []  # acknowledged by Kafka: no database write at all
        found = await decided(broker, {f"d{i}:request" for i in range(20)}, timeout=10)
        assert all(found[f"d{i}:request"][1] == b"acc_1" for i in range(20))
    finally:
        await producer.stop()
        await engine.dispose()


async def test_when_publishing_fails_the_batch_is_committed_to_the_outbox_before_answering(tmp_path: Path) -> None:
    from tollgate_common.kafka import make_producer

    url = f"sqlite:///{tmp_path / 'policy.db'}"
    engine = create_engine(url)
    repository = PolicyRepository(engine)
    await repository.create_tables()
    broker = EmbeddedBroker()
    producer = make_producer(broker.start(), client_id="test")
    await producer.start()
    broker.stop()  # the producer is connected, then Kafka goes away
    now = [0.0]
    decisions = DecisionLog(repository, clock=lambda: now[0])
    decisions.kafka.producer = producer
    service = PolicyService(repository, PolicyCache(30.0), decisions=decisions)
    try:
        await service.inspect("req_1", "acc_1", ["hi"])  # tries Kafka (bounded by PUBLISH_TIMEOUT), then the outbox
        assert await outbox_ids(url) == ["req_1:request"]
        started = time.monotonic()
        await service.inspect("req_2", "acc_1", ["hi"])  # within DIRECT_RETRY_SECONDS: straight to the outbox
        assert time.monotonic() - started < 1.0
        assert await outbox_ids(url) == ["req_1:request", "req_2:request"]
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        await engine.dispose()
