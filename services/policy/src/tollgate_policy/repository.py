"""Policy versions in SQL (SQLite or PostgreSQL through SQLAlchemy 2 async).

Database failures become :class:`~tollgate_policy.errors.StorageUnavailable` here, and a lost race for a version
becomes :class:`~tollgate_policy.errors.ConcurrentUpdate`, so nothing above this module sees a driver exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tollgate_common.migrations import migrate

from .domain import Action, PolicySet
from .errors import ConcurrentUpdate, StorageUnavailable
from .tables import policy_versions

__all__ = ["PolicyRepository"]

#: What "the database is not there" looks like: driver-level connection failures (SQLAlchemy wraps most;
#: a refused TCP connect can surface as a bare OSError). Anything else is a bug and stays INTERNAL.
_UNAVAILABLE = (OperationalError, InterfaceError, OSError)


class PolicyRepository:
    """Reads the current policy of an account and appends new versions. Never updates or deletes a version."""

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
        """The highest version of ``account_id``'s policy, or None if it never set one."""
        t = policy_versions
        query = select(t.c.version, t.c.rules).where(t.c.account_id == account_id).order_by(t.c.version.desc()).limit(1)
        async with self._connection(begin=False) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        rules = {detector: Action(action) for detector, action in json.loads(row.rules).items()}
        return PolicySet(account_id=account_id, rules=MappingProxyType(rules), version=int(row.version))

    async def add(self, policy: PolicySet) -> None:
        """Store a new version; :class:`ConcurrentUpdate` if another writer already stored that version."""
        values = {
            "account_id": policy.account_id,
            "version": policy.version,
            "rules": json.dumps({d: a.value for d, a in sorted(policy.rules.items())}),
            "created_at_unix_ms": int(time.time() * 1000),
        }
        try:
            async with self._connection(begin=True) as conn:
                await conn.execute(insert(policy_versions).values(**values))
        except IntegrityError as exc:
            raise ConcurrentUpdate(
                f"policy version {policy.version} of account {policy.account_id!r} was written concurrently"
            ) from exc

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
