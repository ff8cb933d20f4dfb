"""The policy store and SetPolicy/GetPolicy semantics, one test class run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import policy_pb2 as ev
from tollgate_common.db import create_engine
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_dlp.domain import DEFAULT_RULES, Action, PolicySet
from tollgate_dlp.errors import ConcurrentUpdate
from tollgate_policy.application import PolicyCache, PolicyService
from tollgate_policy.repository import PolicyRepository
from tollgate_policy.tables import messaging


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'policy.db'}"


class PolicyStoreContract:
    """Subclasses provide ``engine_args`` (url, schema); every test runs against that real database."""

    @pytest.fixture
    def engine_args(self) -> tuple[str, str]:
        raise NotImplementedError

    @pytest.fixture
    async def engine(self, engine_args: tuple[str, str]) -> AsyncIterator[AsyncEngine]:
        url, schema = engine_args
        engine = create_engine(url, schema=schema)
        await PolicyRepository(engine, schema=schema).create_tables()
        yield engine
        await engine.dispose()

    @pytest.fixture
    def repository(self, engine: AsyncEngine, engine_args: tuple[str, str]) -> PolicyRepository:
        return PolicyRepository(engine, schema=engine_args[1])

    def service(self, repository: PolicyRepository) -> PolicyService:
        return PolicyService(repository, PolicyCache(ttl=30.0))

    async def test_an_account_that_never_set_a_policy_has_none(self, repository: PolicyRepository) -> None:
        assert await repository.current("acc_new") is None

    async def test_current_is_the_highest_version_with_its_rules(self, repository: PolicyRepository) -> None:
        v1 = PolicySet.default("acc_1").revised({"secret": Action.BLOCK})
        v2 = v1.revised({"email": Action.REDACT, "payment_card": Action.ALLOW})
        await repository.add(v1)
        await repository.add(v2)
        current = await repository.current("acc_1")
        assert current is not None
        assert current.version == 2
        assert dict(current.rules) == {"email": Action.REDACT, "payment_card": Action.ALLOW}
        assert await repository.current("acc_other") is None

    async def test_a_version_can_be_written_only_once(self, repository: PolicyRepository) -> None:
        v1 = PolicySet.default("acc_1").revised({"secret": Action.BLOCK})
        await repository.add(v1)
        with pytest.raises(ConcurrentUpdate):
            await repository.add(PolicySet.default("acc_1").revised({"email": Action.BLOCK}))
        current = await repository.current("acc_1")
        assert current is not None and dict(current.rules) == {"secret": Action.BLOCK}

    async def test_set_policy_bumps_the_version_and_get_policy_returns_it(self, repository: PolicyRepository) -> None:
        service = self.service(repository)
        assert (await service.get_policy("acc_1")).version == 0
        first = await service.set_policy("acc_1", [("secret", Action.BLOCK)])
        second = await service.set_policy("acc_1", [("email", Action.REDACT)])
        assert (first.version, second.version) == (1, 2)
        current = await service.get_policy("acc_1")
        assert current.version == 2
        assert current.effective() == {**DEFAULT_RULES, "email": "redact"}

    async def test_a_policy_survives_a_restart(self, engine_args: tuple[str, str]) -> None:
        url, schema = engine_args
        for attempt in range(2):
            engine = create_engine(url, schema=schema)
            repository = PolicyRepository(engine, schema=schema)
            await repository.create_tables()  # idempotent on an existing database
            service = self.service(repository)
            if attempt == 0:
                await service.set_policy("acc_1", [("payment_card", Action.BLOCK)])
            else:
                policy = await service.get_policy("acc_1")
                assert (policy.version, policy.action_for("payment_card")) == (1, Action.BLOCK)
            await engine.dispose()

    async def test_concurrent_set_policies_each_get_their_own_version(self, repository: PolicyRepository) -> None:
        service = self.service(repository)
        actions = [Action.ALLOW, Action.REDACT, Action.BLOCK, Action.ALLOW, Action.REDACT, Action.BLOCK]
        results = await asyncio.gather(*(service.set_policy("acc_1", [("email", a)]) for a in actions))
        assert sorted(p.version for p in results) == [1, 2, 3, 4, 5, 6]
        latest = max(results, key=lambda p: p.version)
        assert await service.get_policy("acc_1") == latest

    async def test_events_go_to_the_outbox_in_one_bulk_write_as_the_relay_reads_them(
        self, repository: PolicyRepository, engine: AsyncEngine
    ) -> None:
        events = [
            envelope_for(ev.PolicyDecided(request_id=f"r{i}"), id=f"r{i}:request", service="policy", subject="acc_1")
            for i in range(3)
        ]
        await repository.add_events(events)
        t = messaging.outbox
        async with engine.connect() as conn:
            rows = (await conn.execute(select(t.c.topic, t.c.key, t.c.event_id, t.c.headers, t.c.value))).all()
        assert [(r.topic, r.key, r.event_id, bytes(r.value)) for r in rows] == [
            (Topics.POLICY, "acc_1", e.id, e.data) for e in events
        ]
        headers = [(k, v.encode()) for k, v in json.loads(rows[0].headers)]
        assert Envelope.from_kafka(headers, bytes(rows[0].value)) == events[0]


class TestPolicyStoreOnSqlite(PolicyStoreContract):
    @pytest.fixture
    def engine_args(self, tmp_path: Path) -> tuple[str, str]:
        return sqlite_url(tmp_path), "policy"


@pytest.mark.postgres
class TestPolicyStoreOnPostgres(PolicyStoreContract):
    @pytest.fixture
    def engine_args(self, postgres: tuple[str, str]) -> tuple[str, str]:
        return postgres
