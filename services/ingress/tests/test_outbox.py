"""Nothing is lost when Kafka is down: usage events go to the SQLite outbox and are published once it is back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx2
from ingress_fakes import Fakes, auth, make_settings, usage_events
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Topics
from tollgate_common.kafka import ensure_topics
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.ports import free_port
from tollgate_ingress.api import create_app
from tollgate_ingress.deps import Deps

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def outbox_ids(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM outbox")}


async def wait_for(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """A bounded wait for something that happens in the background (not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_events_survive_a_broker_outage(fakes: Fakes, tmp_path: Path) -> None:
    broker = EmbeddedBroker()
    bootstrap = broker.start()
    await ensure_topics(bootstrap, [Topics.USAGE])
    settings = make_settings(fakes, bootstrap, tmp_path, kafka_send_timeout_seconds=1.0)
    deps = await Deps.start(settings)
    app = create_app(settings, deps)
    db = tmp_path / "outbox.db"
    restarted: EmbeddedBroker | None = None
    try:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as client:
            await wait_for(lambda: deps.publisher.started, "the producer to start")
            first = await client.post("/v1/chat/completions", json=BODY, headers=auth())
            assert first.status_code == 200
            await usage_events(bootstrap, {first.headers["x-request-id"]})
            assert outbox_ids(db) == set()

            broker.stop()
            # Requests still succeed at once; their usage goes to the outbox instead of being lost.
            down = []
            for stream in (False, True):
                resp = await client.post("/v1/chat/completions", json={**BODY, "stream": stream}, headers=auth())
                assert resp.status_code == 200
                down.append(resp.headers["x-request-id"])
            await wait_for(lambda: set(down) <= outbox_ids(db), "events in the outbox")

            restarted = EmbeddedBroker(port=broker.port)  # same address, empty memory
            restarted.start()
            found = await usage_events(bootstrap, set(down))
            for request_id in down:
                _env, event, key = found[request_id][0]
                assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and key == b"acct_1"
                assert event.usage.total_tokens == 19
            await wait_for(lambda: outbox_ids(db) == set(), "the relay to empty the outbox")

            after = await client.post("/v1/chat/completions", json=BODY, headers=auth())
            await usage_events(bootstrap, {after.headers["x-request-id"]})
    finally:
        await app.state.services.shutdown(grace=5)
        broker.stop()
        if restarted:
            restarted.stop()


async def test_shutdown_without_kafka_keeps_events_for_the_next_start(fakes: Fakes, tmp_path: Path) -> None:
    port = free_port()
    nowhere = f"127.0.0.1:{port}"  # no broker listens here yet
    settings = make_settings(fakes, nowhere, tmp_path, kafka_send_timeout_seconds=1.0)
    deps = await Deps.start(settings)
    app = create_app(settings, deps)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as client:
        resp = await client.post("/v1/chat/completions", json=BODY, headers=auth())
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
    await app.state.services.shutdown(grace=5)
    assert outbox_ids(tmp_path / "outbox.db") == {request_id}

    broker = EmbeddedBroker(port=port)
    broker.start()
    try:
        deps = await Deps.start(settings)  # the next start publishes what the last one could not
        try:
            found = await usage_events(nowhere, {request_id})
            assert len(found[request_id]) == 1
            await wait_for(lambda: outbox_ids(tmp_path / "outbox.db") == set(), "the outbox to drain")
        finally:
            await deps.close()
    finally:
        broker.stop()
