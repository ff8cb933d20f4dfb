"""Policy's commands and queries: the only place that puts the domain, the repository and the cache together.

The cache
---------
Inspect is on every request's path, so an account's policy is read from the database once and then served from
memory. SetPolicy writes the new version and puts it in the cache at once (the invalidation). That is exact for
ONE replica, which is how policy runs today. With several replicas, another replica keeps serving the version it
has for at most ``cache_ttl_seconds`` before reading again; a fan-out invalidation (a Kafka topic or PostgreSQL
LISTEN/NOTIFY) would make that immediate and is the next step when policy scales out.

When the database does not answer, a cached policy is still served past its TTL (stale beats failing every
request) and trusted for another TTL before the next try; an account never seen before gets UNAVAILABLE rather
than a guessed policy, because guessing the default could loosen an account that had asked to block. Concurrent
misses for one account share a single read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import domain
from .domain import Action, Inspection, PolicySet, Verdict
from .errors import ConcurrentUpdate, InvalidArgument, StorageUnavailable
from .metrics import FINDINGS, INSPECT_SECONDS, INSPECTIONS, SCANNED_CHARACTERS
from .repository import PolicyRepository

__all__ = ["PolicyCache", "PolicyService"]

log = logging.getLogger(__name__)

#: SetPolicy re-reads and retries this many times when another writer takes the next version first.
_SET_ATTEMPTS = 8
_MAX_ACCOUNT_ID = 200  # the column's width


@dataclass(slots=True)
class _Entry:
    policy: PolicySet
    loaded_at: float


class PolicyCache:
    """Account id → current policy, trusted for ``ttl`` seconds. Never replaces a version with an older one."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def fresh(self, account_id: str) -> PolicySet | None:
        entry = self._entries.get(account_id)
        if entry is None or self.clock() - entry.loaded_at > self.ttl:
            return None
        return entry.policy

    def stale(self, account_id: str) -> PolicySet | None:
        entry = self._entries.get(account_id)
        return None if entry is None else entry.policy

    def offer(self, policy: PolicySet) -> PolicySet:
        """Keep ``policy`` unless a newer version is already here (a slow read racing a SetPolicy); return the kept."""
        entry = self._entries.get(policy.account_id)
        if entry is not None and entry.policy.version > policy.version:
            return entry.policy
        self._entries[policy.account_id] = _Entry(policy, self.clock())
        return policy


def _check_account(account_id: str) -> None:
    if not account_id:
        raise InvalidArgument("account_id is required")
    if len(account_id) > _MAX_ACCOUNT_ID:
        raise InvalidArgument(f"account_id is longer than {_MAX_ACCOUNT_ID} characters")


class PolicyService:
    """Inspect prompts under an account's policy; read and change that policy."""

    def __init__(self, repository: PolicyRepository, cache: PolicyCache) -> None:
        self.repository = repository
        self.cache = cache
        self._loads: dict[str, asyncio.Future[PolicySet]] = {}

    async def inspect(self, request_id: str, account_id: str, texts: Sequence[str]) -> Inspection:
        """The verdict, findings and (for REDACT) rewritten texts. Logs counts, never text."""
        _check_account(account_id)
        policy = await self._policy(account_id)
        started = time.perf_counter()
        result = domain.inspect(texts, policy)
        INSPECT_SECONDS.observe(time.perf_counter() - started)
        INSPECTIONS.labels(result.verdict.value).inc()
        SCANNED_CHARACTERS.inc(sum(map(len, texts)))
        for finding in result.findings:
            FINDINGS.labels(finding.type, finding.action.value).inc()
        level = logging.INFO if result.verdict is Verdict.BLOCK else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "inspected",
                extra={
                    "request_id": request_id,
                    "account_id": account_id,
                    "verdict": result.verdict.value,
                    "findings": dict(result.counts),
                    "policy_version": result.policy_version,
                    "texts": len(texts),
                },
            )
        return result

    async def set_policy(self, account_id: str, rules: Sequence[tuple[str, Action | None]]) -> PolicySet:
        """Store ``rules`` as the account's next policy version and make this replica use it at once."""
        _check_account(account_id)
        checked = domain.validate_rules(rules)
        for attempt in range(1, _SET_ATTEMPTS + 1):
            current = await self.repository.current(account_id) or PolicySet.default(account_id)
            revised = current.revised(checked)
            try:
                await self.repository.add(revised)
            except ConcurrentUpdate:
                if attempt == _SET_ATTEMPTS:
                    raise
                continue
            self.cache.offer(revised)
            log.info(
                "policy set",
                extra={
                    "account_id": account_id,
                    "policy_version": revised.version,
                    "rules": {d: a.value for d, a in revised.rules.items()},
                },
            )
            return revised
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_policy(self, account_id: str) -> PolicySet:
        """The account's current policy, or the default (version 0) if it never set one."""
        _check_account(account_id)
        return await self._policy(account_id)

    async def _policy(self, account_id: str) -> PolicySet:
        cached = self.cache.fresh(account_id)
        if cached is not None:
            return cached
        # Single flight: a burst of requests for an account whose entry is missing or expired (a cold start, a
        # TTL boundary under load) shares one database read instead of queueing one each.
        pending = self._loads.get(account_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(account_id))
            self._loads[account_id] = pending
            pending.add_done_callback(functools.partial(self._loaded, account_id))
        return await asyncio.shield(pending)  # a cancelled caller does not cancel the others' read

    def _loaded(self, account_id: str, load: asyncio.Future[PolicySet]) -> None:
        self._loads.pop(account_id, None)
        if not load.cancelled():
            load.exception()  # retrieved here, so an error nobody awaited any more is not reported as lost

    async def _load(self, account_id: str) -> PolicySet:
        try:
            loaded = await self.repository.current(account_id)
        except StorageUnavailable:
            stale = self.cache.stale(account_id)
            if stale is None:
                raise
            log.warning(
                "policy database unavailable; serving the cached policy",
                extra={"account_id": account_id, "policy_version": stale.version},
            )
            return self.cache.offer(stale)  # trusted for another TTL: an outage is not retried on every request
        return self.cache.offer(loaded or PolicySet.default(account_id))
