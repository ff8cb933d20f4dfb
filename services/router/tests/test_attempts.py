"""Every upstream attempt becomes an AttemptRecorded event, durable before the answer: acknowledged by the real
embedded Kafka broker while a producer is connected, else in the router's outbox (then relayed), with the right
outcomes, usage and numbering."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import attempts_pb2 as apb
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.db import create_engine, session_maker
from tollgate_common.events import Envelope, Topics, decode
from tollgate_common.grpc import wait_for_health
from tollgate_common.kafka import ensure_topics, make_producer
from tollgate_common.migrations import migrate, open_database, schema_drift
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.mock_faults import FaultRule
from tollgate_dev.mock_upstream import MockUpstream, start_mock_upstream
from tollgate_dev.ports import free_port
from tollgate_router.attempts import Attempt, AttemptLog, now_ms
from tollgate_router.config import Settings
from tollgate_router.domain import Provider, Route
from tollgate_router.server import RouterServer
from tollgate_router.tables import metadata

ATTEMPT = "tollgate.attempts.v1.attempt.recorded"


@pytest.fixture
def broker() -> Iterator[str]:
    b = EmbeddedBroker()
    try:
        yield b.start()
    finally:
        b.stop()


def _catalogue(tmp_path: Path, primary: MockUpstream, backup: MockUpstream) -> str:
    path = tmp_path / "providers.yaml"
    path.write_text(
        f"""
providers:
  primary: {{kind: openai, base_url: "{primary.base_url}", region: eu}}
  backup: {{kind: openai, base_url: "{backup.base_url}", region: us}}
models:
  m:
    deployments:
      - {{provider: primary, upstream_model: gpt-4o-mini, name: m-primary}}
      - {{provider: backup, upstream_model: gpt-4o, priority: 1}}
"""
    )
    return str(path)


def _request(request_id: str, **extra: object) -> pb.CompleteRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], **extra}
    return pb.CompleteRequest(request_id=request_id, account_id="acc_7", model="m", body_json=json.dumps(body).encode())


async def _router(environ: dict[str, str]) -> tuple[RouterServer, grpc.aio.Channel, pb_grpc.RouterServiceStub]:
    server = RouterServer(Settings.from_env({"ROUTER_GRPC_PORT": "0", "ROUTER_BACKOFF_BASE_SECONDS": "0", **environ}))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, channel, pb_grpc.RouterServiceStub(channel)


async def test_attempts_are_in_the_outbox_before_the_answer(mock: MockUpstream, tmp_path: Path) -> None:
    backup = await start_mock_upstream("127.0.0.1", 0)
    db = tmp_path / "router.db"
    server, channel, stub = await _router(
        {"ROUTER_PROVIDERS_FILE": _catalogue(tmp_path, mock, backup), "ROUTER_DATABASE_URL": f"sqlite:///{db}"}
    )
    try:
        mock.faults.arm(FaultRule(fault="500", times=2))
        reply = await stub.Complete(_request("req_a"))
        # read the file directly, while the router still runs and before anything else could flush it
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT topic, key, event_id, value FROM outbox ORDER BY id").fetchall()
    finally:
        await channel.close()
        await server.stop(grace=0)
        await backup.stop()
    assert [(topic, key, event_id) for topic, key, event_id, _ in rows] == [
        (Topics.ATTEMPTS, "acc_7", "req_a:1"),
        (Topics.ATTEMPTS, "acc_7", "req_a:2"),
        (Topics.ATTEMPTS, "acc_7", "req_a:3"),
    ]
    events = [apb.AttemptRecorded.FromString(value) for *_, value in rows]
    assert [(e.deployment, e.outcome, e.error_reason, e.region, e.http_status) for e in events] == [
        ("m-primary", apb.ATTEMPT_OUTCOME_UPSTREAM_ERROR, "upstream_error", "eu", 500),
        ("m-primary", apb.ATTEMPT_OUTCOME_UPSTREAM_ERROR, "upstream_error", "eu", 500),
        ("m/backup", apb.ATTEMPT_OUTCOME_SUCCEEDED, "", "us", 200),
    ]
    last = events[-1]
    assert (last.provider, last.upstream_model, last.upstream_request_id) == (
        "backup",
        "gpt-4o",
        reply.upstream_request_id,
    )
    assert last.usage.prompt_tokens == reply.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == reply.usage.completion_tokens > 0
    assert events[0].usage.total_tokens == 0 and not last.streamed and last.http_status == 200


async def test_the_callers_prompt_estimate_reaches_every_attempt_event(mock: MockUpstream, tmp_path: Path) -> None:
    """Metering charges a request whose ingress died by this estimate (no usage event comes): it must be on each
    attempt, retried or streamed, as ingress sent it."""
    backup = await start_mock_upstream("127.0.0.1", 0)
    db = tmp_path / "router.db"
    server, channel, stub = await _router(
        {"ROUTER_PROVIDERS_FILE": _catalogue(tmp_path, mock, backup), "ROUTER_DATABASE_URL": f"sqlite:///{db}"}
    )
    try:
        mock.faults.arm(FaultRule(fault="500", times=1))
        unary = _request("req_e1")
        unary.prompt_tokens_estimate = 37
        await stub.Complete(unary)
        streamed = _request("req_e2", stream=True)
        streamed.prompt_tokens_estimate = 41
        replies = [reply async for reply in stub.StreamComplete(streamed)]
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT event_id, value FROM outbox ORDER BY id").fetchall()
    finally:
        await channel.close()
        await server.stop(grace=0)
        await backup.stop()
    assert replies[-1].HasField("end")
    estimates = {event_id: apb.AttemptRecorded.FromString(value).prompt_tokens_estimate for event_id, value in rows}
    assert estimates == {"req_e1:1": 37, "req_e1:2": 37, "req_e2:1": 41}


async def test_attempts_arrive_on_the_broker_with_outcomes_and_usage(
    mock: MockUpstream, tmp_path: Path, broker: str
) -> None:
    backup = await start_mock_upstream("127.0.0.1", 0)
    server, channel, stub = await _router(
        {
            "ROUTER_PROVIDERS_FILE": _catalogue(tmp_path, mock, backup),
            "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/router.db",
            "ROUTER_KAFKA_BOOTSTRAP_SERVERS": broker,
        }
    )
    try:
        mock.faults.arm(FaultRule(fault="429", times=1, retry_after=0))
        messages = [m async for m in stub.StreamComplete(_request("req_s", stream=True))]
        end = messages[-1].end
        mock.faults.arm(FaultRule(fault="401", times=1))
        reply = await stub.Complete(_request("req_c"))
        seen = await _read_attempts(broker, {"req_s:1", "req_s:2", "req_c:1", "req_c:2"})
    finally:
        await channel.close()
        await server.stop(grace=0)
        await backup.stop()
    by_id = {env.id: (env, decode(env.type, env.data)) for env in seen}
    assert all(env.type == ATTEMPT and env.subject == "acc_7" for env, _ in by_id.values())
    limited, streamed = by_id["req_s:1"][1], by_id["req_s:2"][1]
    assert (limited.outcome, limited.http_status, limited.streamed) == (apb.ATTEMPT_OUTCOME_RATE_LIMITED, 429, True)
    assert (streamed.outcome, streamed.deployment, streamed.attempt) == (apb.ATTEMPT_OUTCOME_SUCCEEDED, "m-primary", 2)
    assert streamed.usage.prompt_tokens == end.usage.prompt_tokens
    assert streamed.usage.completion_tokens == end.usage.completion_tokens > 0
    assert streamed.time_to_first_token_ms <= streamed.latency_ms and streamed.streamed
    auth, served = by_id["req_c:1"][1], by_id["req_c:2"][1]
    assert (auth.outcome, auth.error_reason, auth.http_status) == (apb.ATTEMPT_OUTCOME_AUTH_ERROR, "upstream_auth", 401)
    assert (served.outcome, served.provider) == (apb.ATTEMPT_OUTCOME_SUCCEEDED, "backup")
    assert served.usage.total_tokens == reply.usage.total_tokens
    assert served.request_id == "req_c" and served.account_id == "acc_7" and served.started_at_unix_ms > 0


async def _read_attempts(bootstrap: str, ids: set[str], timeout: float = 30.0) -> list[Envelope]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    seen: list[Envelope] = []
    try:
        deadline = time.monotonic() + timeout
        parts: list[TopicPartition] = []
        while not parts:
            await consumer.topics()
            parts = [
                TopicPartition(Topics.ATTEMPTS, p) for p in sorted(consumer.partitions_for_topic(Topics.ATTEMPTS) or ())
            ]
            if time.monotonic() > deadline:
                raise AssertionError("the attempts topic never appeared")
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not ids <= {env.id for env in seen}:
            if time.monotonic() > deadline:
                raise AssertionError(f"attempts missing after {timeout}s; saw {[e.id for e in seen]}")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend(Envelope.from_kafka(r.headers, r.value) for r in records)
    finally:
        await consumer.stop()
    return seen


async def test_the_migrations_match_the_tables(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/drift.db")
    try:
        await migrate(engine, "tollgate_router")
        assert await schema_drift(engine, metadata) == []
    finally:
        await engine.dispose()


async def test_a_kill_9_right_after_the_answer_loses_no_attempt(mock: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and not k.endswith("_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tollgate_router",
        env={
            **clean,
            "OTEL_SDK_DISABLED": "true",
            "ROUTER_MOCK_BASE_URL": mock.base_url,
            "ROUTER_GRPC_PORT": str(port),
            "ROUTER_DATABASE_URL": f"sqlite:///{db}",
            "ROUTER_PRICE_CHECK": "off",  # a router alone: no metering to compare its catalogue with
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_health(f"127.0.0.1:{port}", service="tollgate.router.v1.RouterService", timeout=30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            request = pb.CompleteRequest(request_id="req_k", account_id="acc_k", body_json=json.dumps(body).encode())
            reply = await stub.Complete(request)
            proc.kill()  # SIGKILL: no drain, no flush
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT event_id, value FROM outbox").fetchall()
    assert [event_id for event_id, _ in rows] == ["req_k:1"]
    event = apb.AttemptRecorded.FromString(rows[0][1])
    assert event.outcome == apb.ATTEMPT_OUTCOME_SUCCEEDED
    assert event.usage.total_tokens == reply.usage.total_tokens > 0


def _attempt(request_id: str) -> Attempt:
    route = Route("m", Provider("p", "openai", "http://127.0.0.1:9"), "up", "owner")
    return Attempt(
        request_id=request_id,
        account_id="acc_d",
        number=1,
        model="m",
        route=route,
        streamed=False,
        started_at_unix_ms=now_ms(),
        outcome=apb.ATTEMPT_OUTCOME_SUCCEEDED,
    )


async def _log(tmp_path: Path) -> tuple[AttemptLog, AsyncEngine]:
    engine = await open_database(f"sqlite:///{tmp_path}/direct.db", "tollgate_router", schema="router")
    return AttemptLog(session_maker(engine)), engine


def _outbox_ids(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "direct.db") as conn:
        return [event_id for (event_id,) in conn.execute("SELECT event_id FROM outbox ORDER BY id")]


async def test_with_a_connected_producer_attempts_are_acknowledged_by_kafka_not_written_to_the_outbox(
    broker: str, tmp_path: Path
) -> None:
    """No relay runs here: what is on the topic when record() returns was published by the log itself."""
    await ensure_topics(broker, [Topics.ATTEMPTS])
    log, engine = await _log(tmp_path)
    producer = make_producer(broker)
    await producer.start()
    try:
        log.kafka.producer = producer
        await asyncio.gather(*(log.record([_attempt(f"req_d{i}")]) for i in range(5)))
        assert _outbox_ids(tmp_path) == []
        seen = await _read_attempts(broker, {f"req_d{i}:1" for i in range(5)}, timeout=10)
        assert {env.subject for env in seen} == {"acc_d"}
    finally:
        await producer.stop()
        await engine.dispose()


async def test_a_failed_publish_falls_back_to_the_outbox_and_stays_there_for_a_while(
    broker: str, tmp_path: Path
) -> None:
    log, engine = await _log(tmp_path)
    producer = make_producer(broker)
    await producer.start()
    await producer.stop()  # a producer that can no longer send: every publish fails
    try:
        log.kafka.producer = producer
        await log.record([_attempt("req_f1")])
        await log.record([_attempt("req_f2")])  # within DIRECT_RETRY_SECONDS: straight to the outbox
        assert _outbox_ids(tmp_path) == ["req_f1:1", "req_f2:1"]
    finally:
        await engine.dispose()
