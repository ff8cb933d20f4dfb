"""Policy versions and the event outbox in SQL (SQLite or PostgreSQL through SQLAlchemy 2 async).

Database failures become :class:`~tollgate_dlp.errors.StorageUnavailable` here, and a lost race for a version
becomes :class:`~tollgate_dlp.errors.ConcurrentUpdate`, so nothing above this module sees a driver exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tollgate_common.bulk import insert_rows
from tollgate_common.events import Envelope, Topics
from tollgate_common.migrations import migrate
from tollgate_dlp.document import Action, PolicySet, ScopePolicy
from tollgate_dlp.errors import ConcurrentUpdate, StorageUnavailable
from tollgate_dlp.state import PolicyState

from .tables import messaging, policy_versions

__all__ = ["DISCARD", "ENFORCED", "SHADOW", "PolicyRepository", "StoredVersion"]

#: The kinds of version (tables.py).
ENFORCED, SHADOW, DISCARD = "enforced", "shadow", "discard"

#: What "the database is not there" looks like: driver-level connection failures (SQLAlchemy wraps most;
#: a refused TCP connect can surface as a bare OSError). Anything else is a bug and stays INTERNAL.
_UNAVAILABLE = (OperationalError, InterfaceError, OSError)
_OUTBOX_COLUMNS = ("topic", "key", "event_id", "headers", "value")


@dataclass(frozen=True)
class StoredVersion:
    """One row of the history."""

    policy: PolicySet
    kind: str
    created_at_unix_ms: int


class PolicyRepository:
    """Reads an account's policy versions and appends new ones (never updates or deletes one); writes events."""

    def __init__(self, engine: AsyncEngine, *, schema: str | None = None) -> None:
        self.engine = engine
        self.schema = schema

    async def create_tables(self) -> None:
        """Migrate the schema (PostgreSQL) and tables to the newest revision. Idempotent."""
        try:
            await migrate(self.engine, "tollgate_policy", schema=self.schema)
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"policy database unavailable: {type(exc).__name__}") from exc

    async def current(self, account_id: str) -> PolicySet | None:
        """The highest enforced version of ``account_id``'s policy, or None if it never set one."""
        state = await self.state(account_id)
        return None if state is None else state.enforced

    async def state(self, account_id: str) -> PolicyState | None:
        """Enforced + pending shadow + head version, or None for an account without any version."""
        t = policy_versions
        columns = (t.c.version, t.c.rules, t.c.document, t.c.kind, t.c.created_at_unix_ms)
        newest = select(*columns).where(t.c.account_id == account_id).order_by(t.c.version.desc()).limit(1)
        async with self._connection(begin=False) as conn:
            row = (await conn.execute(newest)).first()
            if row is None:
                return None
            if row.kind == ENFORCED:
                return PolicyState(_policy(account_id, row), None, int(row.version))
            enforced_row = (await conn.execute(newest.where(t.c.kind == ENFORCED))).first()
        enforced = PolicySet.default(account_id) if enforced_row is None else _policy(account_id, enforced_row)
        shadow = _policy(account_id, row) if row.kind == SHADOW else None
        return PolicyState(enforced, shadow, int(row.version))

    async def versions(self, account_id: str, limit: int) -> list[StoredVersion]:
        """The newest ``limit`` versions of every kind, newest first."""
        t = policy_versions
        query = (
            select(t.c.version, t.c.rules, t.c.document, t.c.kind, t.c.created_at_unix_ms)
            .where(t.c.account_id == account_id)
            .order_by(t.c.version.desc())
            .limit(limit)
        )
        async with self._connection(begin=False) as conn:
            rows = (await conn.execute(query)).all()
        return [StoredVersion(_policy(account_id, r), r.kind, int(r.created_at_unix_ms)) for r in rows]

    async def add(self, policy: PolicySet, kind: str = ENFORCED) -> None:
        """Store a new version; :class:`ConcurrentUpdate` if another writer already stored that version."""
        values = {
            "account_id": policy.account_id,
            "version": policy.version,
            "rules": json.dumps({d: a.value for d, a in sorted(policy.rules.items())}),
            "document": json.dumps(policy.to_json(), sort_keys=True),
            "kind": kind,
            "created_at_unix_ms": int(time.time() * 1000),
        }
        try:
            async with self._connection(begin=True) as conn:
                await conn.execute(insert(policy_versions).values(**values))
        except IntegrityError as exc:
            raise ConcurrentUpdate(
                f"policy version {policy.version} of account {policy.account_id!r} was written concurrently"
            ) from exc

    async def add_events(self, events: Sequence[Envelope]) -> None:
        """PolicyDecided events into the outbox, in one transaction and one plain-SQL statement (the relay
        publishes them). ``insert_rows`` rather than the ORM's insert: this runs for every group commit of the
        decision log, and a parameter dict per row was most of its cost."""
        rows = [
            (Topics.POLICY, env.subject, env.id, json.dumps([[k, v.decode()] for k, v in env.headers()]), env.data)
            for env in events
        ]
        async with self._connection(begin=True) as conn:
            await insert_rows(conn, messaging.outbox, _OUTBOX_COLUMNS, rows)

    @asynccontextmanager
    async def _connection(self, *, begin: bool) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction when ``begin``), with driver failures mapped to StorageUnavailable."""
        try:
            async with self.engine.connect() as conn:
                if begin:
                    async with conn.begin():
                        yield conn
                else:
                    yield conn
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"policy database unavailable: {type(exc).__name__}") from exc


def _policy(account_id: str, row: Any) -> PolicySet:
    """A stored row as a PolicySet; rows written before scopes existed carry only the account's rules."""
    if row.document is not None:
        return PolicySet.from_json(account_id, int(row.version), json.loads(row.document))
    rules = {detector: Action(action) for detector, action in json.loads(row.rules).items()}
    scopes = {"account": ScopePolicy(rules=MappingProxyType(rules))} if rules else {}
    return PolicySet(account_id, int(row.version), MappingProxyType(scopes))
