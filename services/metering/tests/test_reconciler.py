"""A request whose usage event never came (ingress died) is rated from the router's attempts: once its attempts are
older than METERING_RECONCILE_AFTER_SECONDS metering publishes a reconciled usage event for it, rated once; a
request whose usage did come is left alone. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tollgate.events.v1 import attempts_pb2, usage_pb2
from tollgate_common.db import session_maker
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_dev.testing import fresh_postgres
from tollgate_metering.application import Metering
from tollgate_metering.domain import DEMO_PRICE_BOOK
from tollgate_metering.reconciler import RECONCILED_TYPE, AttemptsConsumer, Reconciler
from tollgate_metering.repository import open_database
from tollgate_metering.tables import attempt_usage, messaging, rated_usage

NOON = 1_795_176_000_000


class Clock:
    def __init__(self) -> None:
        self.now = NOON / 1000

    def __call__(self) -> float:
        return self.now


def _attempt(request_id: str, number: int, outcome: int, *, prompt: int = 0, completion: int = 0,
             unknown: bool = False, model: str = "gpt-4o-mini", estimate: int = 0) -> Envelope:
    message = attempts_pb2.AttemptRecorded(
        request_id=request_id, account_id="acc_1", attempt=number, model=model, provider="openai",
        deployment=f"{model}/mock", upstream_model=model, outcome=outcome,  # type: ignore[arg-type]
        usage=usage_pb2.TokenUsage(prompt_tokens=prompt, completion_tokens=completion,
                                   total_tokens=prompt + completion),
        upstream_request_id=f"up-{request_id}-{number}", started_at_unix_ms=NOON, latency_ms=50, streamed=True,
        usage_unknown=unknown, prompt_tokens_estimate=estimate)
    return envelope_for(message, id=f"{request_id}:{number}", service="router", subject="acc_1")


@pytest.fixture(params=["sqlite", "postgres"])
async def metering(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Metering]:
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url, schema = f"sqlite:///{tmp_path}/m.db", "metering"
        else:
            url, schema = await stack.enter_async_context(fresh_postgres())
        engine = await open_database(url, schema)
        metering = Metering(session_maker(engine), clock=lambda: NOON + 1)
        await metering.register_price_book(DEMO_PRICE_BOOK)
        yield metering
        await engine.dispose()


async def _outbox(metering: Metering) -> list[Any]:
    async with metering.sessions() as s:
        return list(await s.execute(select(messaging.outbox).where(messaging.outbox.c.topic == Topics.USAGE)))


async def test_requests_without_usage_are_rated_from_their_attempts(metering: Metering, make_usage: Any) -> None:
    clock = Clock()
    consumer = AttemptsConsumer(metering, "unused:9092", clock=clock)
    reconciler = Reconciler(metering, after_seconds=60, clock=clock)
    attempts = [
        # crashed: a timeout on the first deployment, then a success the caller never settled
        # (the caller's estimate is not used: the provider reported the usage)
        _attempt("req_crashed", 1, attempts_pb2.ATTEMPT_OUTCOME_TIMEOUT, unknown=True, estimate=25),
        _attempt("req_crashed", 2, attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED, prompt=40, completion=900,
                 model="gpt-4o", estimate=25),
        # its usage event came (ingress settled it): nothing to do
        _attempt("req_settled", 1, attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED, prompt=10, completion=20),
        # cancelled mid-way (a stream cut by an ingress crash), nothing reported: charged by the caller's estimate
        _attempt("req_cut", 1, attempts_pb2.ATTEMPT_OUTCOME_CANCELLED, unknown=True, estimate=25),
        # a health probe (no account) is not a request
        envelope_for(attempts_pb2.AttemptRecorded(request_id="probe_1", attempt=1), id="probe_1:1",
                     service="router", subject=""),
    ]
    async with metering.sessions.begin() as s:
        await consumer._store(s, attempts)
        await metering.record_usage(s, [make_usage("req_settled", prompt=10, completion=20)], publish=True)
    async with metering.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(attempt_usage))).scalar_one() == 4

    assert await reconciler.reconcile_due() == 0  # too young: ingress's usage event may still be on its way
    clock.now += 61
    assert await reconciler.reconcile_due() == 2
    published = {row.event_id: row for row in await _outbox(metering)}
    assert set(published) == {"reconciled:req_crashed", "reconciled:req_cut"}  # not req_settled, not the probe
    crashed = usage_pb2.UsageRecorded.FromString(published["reconciled:req_crashed"].value)
    assert (crashed.model, crashed.usage.prompt_tokens, crashed.usage.completion_tokens) == ("gpt-4o", 40, 900)
    assert crashed.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and not crashed.usage_unknown
    assert crashed.hold_id == "req_crashed" and crashed.upstream_request_id == "up-req_crashed-2"
    cut = usage_pb2.UsageRecorded.FromString(published["reconciled:req_cut"].value)
    assert cut.outcome == usage_pb2.REQUEST_OUTCOME_FAILED and cut.usage_unknown
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens, cut.usage.total_tokens) == (25, 0, 25)
    async with metering.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(attempt_usage))).scalar_one() == 0
    assert await reconciler.reconcile_due() == 0  # once

    # The consumer rates the reconciled event like any usage event; ingress's event arriving late is not rated
    # again (each upstream call charged once).
    row = published["reconciled:req_crashed"]
    env = Envelope(id=row.event_id, source="//tollgate/metering", type=RECONCILED_TYPE, subject="acc_1",
                   time="2026-11-20T12:00:00.000Z", data=row.value)
    async with metering.sessions.begin() as s:
        batch = await metering.record_usage(s, [env], publish=True)
        late = await metering.record_usage(s, [make_usage("req_crashed", prompt=40, completion=900)], publish=True)
    assert [r.record.request_id for r in batch.rated] == ["req_crashed"] and not late.rated
    async with metering.sessions() as s:
        rated = (await s.execute(select(rated_usage.c.model, rated_usage.c.completion_tokens)
                                 .where(rated_usage.c.request_id == "req_crashed"))).one()
    assert tuple(rated) == ("gpt-4o", 900)
