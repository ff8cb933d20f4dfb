"""The in-memory policy cache as Inspect sees it: SetPolicy takes effect at once on its replica, other replicas
within the TTL, and a database outage does not stop accounts whose policy is known."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_common.db import create_engine
from tollgate_dev.ports import free_port
from tollgate_dlp.domain import Action, PolicySet, Verdict
from tollgate_dlp.errors import StorageUnavailable
from tollgate_dlp.state import PolicyState
from tollgate_policy.application import PolicyCache, PolicyService
from tollgate_policy.repository import PolicyRepository

CARD = "4111111111111111"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'policy.db'}")
    await PolicyRepository(engine).create_tables()
    yield engine
    await engine.dispose()


def replica(engine: AsyncEngine, clock: Clock, ttl: float = 30.0) -> PolicyService:
    return PolicyService(PolicyRepository(engine), PolicyCache(ttl, clock))


async def test_set_policy_takes_effect_at_once_on_the_same_replica(engine: AsyncEngine) -> None:
    service = replica(engine, Clock())
    assert (await service.inspect("req_1", "acc_1", [CARD])).verdict is Verdict.REDACT  # default now cached
    await service.set_policy("acc_1", [("payment_card", Action.BLOCK)])
    result = await service.inspect("req_2", "acc_1", [CARD])
    assert (result.verdict, result.policy_version) == (Verdict.BLOCK, 1)


async def test_another_replica_sees_the_change_after_the_ttl(engine: AsyncEngine) -> None:
    clock = Clock()
    writer, reader = replica(engine, clock), replica(engine, clock)
    assert (await reader.inspect("req_1", "acc_1", [CARD])).policy_version == 0
    await writer.set_policy("acc_1", [("payment_card", Action.BLOCK)])
    clock.now += 29
    assert (await reader.inspect("req_2", "acc_1", [CARD])).verdict is Verdict.REDACT  # still its cached v0
    clock.now += 2
    result = await reader.inspect("req_3", "acc_1", [CARD])
    assert (result.verdict, result.policy_version) == (Verdict.BLOCK, 1)


def test_a_slow_read_never_replaces_a_newer_version() -> None:
    cache = PolicyCache(30.0, Clock())
    policy = PolicySet.default("acc_1").revised({}).revised({"email": Action.BLOCK})
    newer = PolicyState(policy, None, policy.version)
    cache.offer(newer)
    assert cache.offer(PolicyState.default("acc_1")) == newer
    assert cache.fresh("acc_1") == newer


async def test_when_the_database_is_down_known_policies_are_served_and_unknown_accounts_fail() -> None:
    clock = Clock()
    down = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/test", schema="policy")
    service = PolicyService(PolicyRepository(down, schema="policy"), PolicyCache(30.0, clock))
    known = PolicySet.default("acc_known").revised({"payment_card": Action.BLOCK})
    service.cache.offer(PolicyState(known, None, known.version))
    clock.now += 3600  # long expired: a refresh is attempted and fails
    result = await service.inspect("req_1", "acc_known", [CARD])
    assert (result.verdict, result.policy_version) == (Verdict.BLOCK, 1)
    with pytest.raises(StorageUnavailable):
        await service.inspect("req_2", "acc_unknown", [CARD])
    await down.dispose()


async def test_a_burst_of_misses_for_one_account_reads_the_database_once(engine: AsyncEngine) -> None:
    service = replica(engine, Clock())
    await service.set_policy("acc_1", [("payment_card", Action.BLOCK)])
    service.cache = PolicyCache(30.0, Clock())  # as after a restart: nothing cached
    reads = 0
    current = service.repository.state

    async def counted(account_id: str) -> PolicyState | None:
        nonlocal reads
        reads += 1
        return await current(account_id)

    service.repository.state = counted  # type: ignore[method-assign]
    results = await asyncio.gather(*(service.inspect(f"req_{i}", "acc_1", [CARD]) for i in range(20)))
    assert {(r.verdict, r.policy_version) for r in results} == {(Verdict.BLOCK, 1)}
    assert reads == 1
