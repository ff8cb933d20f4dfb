"""Shared fixtures: real databases (SQLite files, the local PostgreSQL), the real embedded broker, event factories."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import ensure_topics
from tollgate_dev.broker import EmbeddedBroker

UsageFactory = Callable[..., Envelope]

#: 2026-11-20T12:00:00Z: inside the demo book's (unbounded) validity, a fixed day for the aggregates.
NOON = 1_795_176_000_000


def _broker() -> Iterator[str]:
    b = EmbeddedBroker()
    bootstrap = b.start()
    asyncio.run(ensure_topics(bootstrap, [Topics.USAGE, Topics.USAGE_RATED]))
    try:
        yield bootstrap
    finally:
        b.stop()


@pytest.fixture
def broker() -> Iterator[str]:
    """A fresh embedded broker per test (it starts in ~50 ms). Not shared: Tansu makes a consumer group that a
    member just left wait for that member's session to expire (~18 s) before the next member gets partitions."""
    yield from _broker()


@pytest.fixture
def start_broker() -> Iterator[Callable[[], str]]:
    """Start further brokers inside one test (e.g. "the embedded broker restarted and forgot everything")."""
    started: list[EmbeddedBroker] = []

    def start() -> str:
        b = EmbeddedBroker()
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()



@pytest.fixture(scope="session")
def make_usage() -> UsageFactory:
    """``make_usage("req_1", account="acc_1", prompt=…, completion=…)`` → a ``UsageRecorded`` envelope from ingress."""

    def factory(
        request_id: str,
        *,
        account: str = "acc_1",
        key: str = "key_1",
        model: str = "gpt-4o-mini",
        prompt: int = 1000,
        completion: int = 500,
        cached: int = 0,
        reasoning: int = 0,
        at: int = NOON,
        team: str = "",
        project: str = "",
        tags: dict[str, str] | None = None,
        outcome: int = usage_pb2.REQUEST_OUTCOME_SUCCEEDED,
        event_id: str | None = None,
        source: str = "ingress",
    ) -> Envelope:
        msg = usage_pb2.UsageRecorded(
            request_id=request_id,
            account_id=account,
            key_id=key,
            hold_id=request_id,
            model=model,
            provider="openai",
            upstream_model=model,
            upstream_request_id=f"up-{request_id}",
            usage=usage_pb2.TokenUsage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                cached_prompt_tokens=cached,
                reasoning_tokens=reasoning,
            ),
            outcome=outcome,  # type: ignore[arg-type]
            streamed=False,
            occurred_at_unix_ms=at,
            team=team,
            project=project,
            tags=tags or {},
        )
        return envelope_for(msg, id=event_id or request_id, service=source, subject=account, at_unix_ms=at)

    return factory


async def _wait_until(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll an async or sync predicate until truthy (a deadline, not a timed assertion: it only bounds a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def wait_until() -> Callable[..., object]:
    return _wait_until
