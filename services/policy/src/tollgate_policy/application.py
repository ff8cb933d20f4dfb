"""Policy's commands and queries: the only place that puts the domain, the repository and the cache together.

Versions and shadow mode
------------------------
Every change is a new version of the account's whole document (all scopes); old versions stay (the history).
A change saved as *shadow* does not take effect: each Inspect evaluates it beside the enforced version and records
what it would have done (a PolicyDecided event with ``shadow=true``), until it is promoted (a new enforced version
with its document) or discarded. A new enforced change while a shadow is pending ends the shadow (it was drafted
against the old enforced document); a new shadow change edits the pending shadow.

The cache
---------
Inspect is on every request's path, so an account's policy is read from the database once and then served from
memory (enforced and shadow together). A change writes the new version and puts it in the cache at once (the
invalidation). That is exact for ONE replica, which is how policy runs today. With several replicas, another
replica keeps serving the version it has for at most ``cache_ttl_seconds`` before reading again; a fan-out
invalidation (a Kafka topic or PostgreSQL LISTEN/NOTIFY) would make that immediate and is the next step when
policy scales out.

When the database does not answer, a cached policy is still served past its TTL (stale beats failing every
request) and trusted for another TTL before the next try; an account never seen before gets UNAVAILABLE rather
than a guessed policy, because guessing the default could loosen an account that had asked to block. Concurrent
misses for one account share a single read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from types import MappingProxyType

from prometheus_client import Counter
from tollgate_common.events import Envelope
from tollgate_dlp import document, inspection
from tollgate_dlp.decisions import DEV_HASH_KEY, Decision, decided_event, match_hasher
from tollgate_dlp.document import Action, PolicySet
from tollgate_dlp.errors import (
    ConcurrentUpdate,
    InputTooLarge,
    InvalidArgument,
    LimitExceeded,
    NoShadowPolicy,
    StorageUnavailable,
)
from tollgate_dlp.inspection import Inspection, Verdict
from tollgate_dlp.limits import MAX_DOCUMENT_CHARS, AccountGate, Limits, check_document
from tollgate_dlp.scanners import Scan, ScannerCache, scan_texts
from tollgate_dlp.state import PolicyState

from .events import DecisionLog
from .metrics import FINDINGS, INSPECT_SECONDS, INSPECTIONS, SCANNED_CHARACTERS
from .repository import DISCARD, ENFORCED, SHADOW, PolicyRepository, StoredVersion
from .watch import PolicyChanges

__all__ = ["PolicyCache", "PolicyService", "ScannerCache"]

log = logging.getLogger(__name__)

#: A change re-reads and retries this many times when another writer takes the next version first.
_SET_ATTEMPTS = 8
_MAX_ACCOUNT_ID = 200  # the column's width
_MAX_VERSIONS = 100
_DIRECTIONS = ("request", "response")
_DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class _Entry:
    state: PolicyState
    loaded_at: float


class PolicyCache:
    """Account id → current policy state, trusted for ``ttl`` seconds. Never replaces a state with an older one."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def fresh(self, account_id: str) -> PolicyState | None:
        entry = self._entries.get(account_id)
        if entry is None or self.clock() - entry.loaded_at > self.ttl:
            return None
        return entry.state

    def stale(self, account_id: str) -> PolicyState | None:
        entry = self._entries.get(account_id)
        return None if entry is None else entry.state

    def offer(self, state: PolicyState) -> PolicyState:
        """Keep ``state`` unless a newer one is already here (a slow read racing a change); return the kept."""
        entry = self._entries.get(state.account_id)
        if entry is not None and entry.state.head > state.head:
            return entry.state
        self._entries[state.account_id] = _Entry(state, self.clock())
        return state


# The labelled children of the counters, looked up once per label set (``labels()`` takes a lock and builds a
# tuple on every call; Inspect counts on every request).
@functools.cache
def _inspections(verdict: Verdict) -> Counter:
    return INSPECTIONS.labels(verdict.value)


@functools.lru_cache(maxsize=4096)
def _findings(detector: str, action: Action) -> Counter:
    return FINDINGS.labels(detector, action.value)


def _check_account(account_id: str) -> None:
    if not account_id:
        raise InvalidArgument("account_id is required")
    if len(account_id) > _MAX_ACCOUNT_ID:
        raise InvalidArgument(f"account_id is longer than {_MAX_ACCOUNT_ID} characters")


class PolicyService:
    """Inspect texts under an account's policy (and its shadow); read and change that policy."""

    def __init__(
        self,
        repository: PolicyRepository,
        cache: PolicyCache,
        *,
        decisions: DecisionLog | None = None,
        hash_key: bytes = DEV_HASH_KEY,
        limits: Limits = _DEFAULT_LIMITS,
        changes: PolicyChanges | None = None,
    ) -> None:
        self.repository = repository
        self.cache = cache
        #: Where each committed change is pushed (``WatchPolicies``); a fresh fan-out when not given.
        self.changes = changes if changes is not None else PolicyChanges()
        #: Where PolicyDecided events go; None records none (unit tests of the cache).
        self.decisions = decisions
        self.hash = match_hasher(hash_key)
        self._loads: dict[str, asyncio.Future[PolicyState]] = {}
        self.scanners = ScannerCache()
        self.limits = limits
        #: Large inputs are scanned here, off the event loop, each account within its share (limits.py).
        self._pool = ThreadPoolExecutor(limits.scan_threads, thread_name_prefix="policy-scan")
        self._gate = AccountGate(limits.large_scans_per_account, limits.large_scan_queue_per_account)

    def close(self) -> None:
        """Stop the scan threads (after the last Inspect)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def inspect(
        self,
        request_id: str,
        account_id: str,
        texts: Sequence[str],
        *,
        key_id: str = "",
        team: str = "",
        model: str = "",
        direction: str = "request",
        sequence: int = 0,
    ) -> Inspection:
        """The verdict, findings, routing limits and (for REDACT) rewritten texts; records the decision (and the
        shadow's) before answering. Logs counts, never text.

        A call with no texts and no model decides nothing about a request (ingress's ``/v1/models`` asks this way
        for a key's routing limits): it is answered but not recorded, so the audit trail holds only requests."""
        _check_account(account_id)
        if direction not in _DIRECTIONS:
            raise InvalidArgument(f"direction must be one of {', '.join(_DIRECTIONS)}")
        chars = sum(map(len, texts))
        if len(texts) > self.limits.max_texts or chars > self.limits.max_chars:
            raise InputTooLarge(
                f"Inspect takes at most {self.limits.max_texts} texts and {self.limits.max_chars} characters; "
                f"got {len(texts)} texts and {chars} characters"
            )
        state = await self._state(account_id)
        started = time.perf_counter()
        scanners = self._scanners(state)
        if chars >= self.limits.offload_chars:
            async with self._gate.slot(account_id):
                loop = asyncio.get_running_loop()
                scanned = await loop.run_in_executor(self._pool, scan_texts, scanners, texts)
        else:
            scanned = scan_texts(scanners, texts)
        matches, shadow_matches = scanned
        scan_micros = int((time.perf_counter() - started) * 1_000_000)
        checked_model = model if direction == "request" else ""
        result = inspection.inspect(
            texts, state.enforced, team=team, key_id=key_id, model=checked_model, matches=matches
        )
        INSPECT_SECONDS.observe(time.perf_counter() - started)
        _inspections(result.verdict).inc()
        SCANNED_CHARACTERS.inc(chars)
        for finding in result.findings:
            _findings(finding.type, finding.action).inc()
        if self.decisions is not None and (texts or model):
            decision = Decision(
                request_id=request_id,
                account_id=account_id,
                key_id=key_id,
                team=team,
                model=model,
                direction=direction,
                sequence=sequence,
                scanned_bytes=sum(len(t.encode()) for t in texts),
                scan_micros=scan_micros,
            )
            events: list[Envelope] = [decided_event(decision, result, texts, self.hash, shadow=False)]
            if state.shadow is not None:
                shadow = inspection.inspect(
                    texts, state.shadow, team=team, key_id=key_id, model=checked_model, matches=shadow_matches
                )
                events.append(decided_event(decision, shadow, texts, self.hash, shadow=True))
            await self.decisions.record(events)
        level = logging.INFO if result.verdict is Verdict.BLOCK else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "inspected",
                extra={
                    "request_id": request_id,
                    "account_id": account_id,
                    "verdict": result.verdict.value,
                    "rule": result.rule,
                    "findings": dict(result.counts),
                    "policy_version": result.policy_version,
                    "policy_scope": result.scope,
                    "texts": len(texts),
                },
            )
        return result

    def _scanners(self, state: PolicyState) -> tuple[Scan, Scan | None]:
        """The enforced policy's scanner, and the shadow's when its detectors differ (looked up on the loop: the
        cache is not thread-safe; the scanners themselves are)."""
        enforced = self.scanners.get(state.enforced.custom)
        if state.shadow is None or state.shadow.custom == state.enforced.custom:
            return enforced, None
        return enforced, self.scanners.get(state.shadow.custom)

    async def set_policy(self, account_id: str, rules: Sequence[tuple[str, Action | None]]) -> PolicySet:
        """Replace the account scope's rules (keeping its routing) as the next enforced version."""
        _check_account(account_id)
        checked = document.validate_rules(rules)

        def change(state: PolicyState) -> tuple[PolicySet, str]:
            current = state.enforced.scopes.get("account", document.ScopePolicy())
            scope = replace(current, rules=MappingProxyType(checked))
            return state.enforced.with_scope("account", scope, state.head + 1), ENFORCED

        return (await self._change(account_id, change)).enforced

    async def put_scope(self, account_id: str, scope: str, document_json: str, *, shadow: bool) -> StoredVersion:
        """Replace one scope's document, as the next enforced version or as (an edit of) the shadow version."""
        _check_account(account_id)
        document.check_scope(scope)
        if len(document_json) > MAX_DOCUMENT_CHARS:
            raise LimitExceeded(f"document_json is longer than {MAX_DOCUMENT_CHARS} characters")
        try:
            raw = json.loads(document_json or "{}")
        except ValueError as exc:
            raise InvalidArgument(f"document_json is not JSON: {exc}") from None
        parsed = document.parse_scope_document(raw)

        def change(state: PolicyState) -> tuple[PolicySet, str]:
            if shadow:
                base = state.shadow or state.enforced
                return base.with_scope(scope, parsed, state.head + 1), SHADOW
            return state.enforced.with_scope(scope, parsed, state.head + 1), ENFORCED

        state = await self._change(account_id, change)
        written = state.shadow if shadow else state.enforced
        assert written is not None
        return StoredVersion(written, SHADOW if shadow else ENFORCED, int(time.time() * 1000))

    async def promote_shadow(self, account_id: str) -> StoredVersion:
        """The pending shadow document becomes the enforced one (a new version)."""
        _check_account(account_id)

        def change(state: PolicyState) -> tuple[PolicySet, str]:
            if state.shadow is None:
                raise NoShadowPolicy(f"account {account_id!r} has no shadow policy to promote")
            return PolicySet(account_id, state.head + 1, state.shadow.scopes), ENFORCED

        state = await self._change(account_id, change)
        return StoredVersion(state.enforced, ENFORCED, int(time.time() * 1000))

    async def discard_shadow(self, account_id: str) -> StoredVersion:
        """Drop the pending shadow (recorded as a "discard" version carrying the enforced document)."""
        _check_account(account_id)

        def change(state: PolicyState) -> tuple[PolicySet, str]:
            if state.shadow is None:
                raise NoShadowPolicy(f"account {account_id!r} has no shadow policy to discard")
            return PolicySet(account_id, state.head + 1, state.enforced.scopes), DISCARD

        state = await self._change(account_id, change)
        return StoredVersion(PolicySet(account_id, state.head, state.enforced.scopes), DISCARD, int(time.time() * 1000))

    async def versions(self, account_id: str, limit: int = 0) -> list[StoredVersion]:
        _check_account(account_id)
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        return await self.repository.versions(account_id, min(limit or _MAX_VERSIONS, _MAX_VERSIONS))

    async def get_policy(self, account_id: str) -> PolicySet:
        """The account's enforced policy, or the default (version 0) if it never set one."""
        _check_account(account_id)
        return (await self._state(account_id)).enforced

    async def get_state(self, account_id: str) -> PolicyState:
        """Enforced and pending shadow policy (GetPolicy's effective view)."""
        _check_account(account_id)
        return await self._state(account_id)

    async def current_state(self, account_id: str) -> PolicyState:
        """The state read from the database now (not this replica's cache: another replica may have written
        since), offered to the cache; with the database down, the cached state as Inspect would serve it, else
        StorageUnavailable. What ``GetPolicyState`` answers, so an in-process decider is as current as policy."""
        _check_account(account_id)
        return await self._load(account_id)

    async def _change(self, account_id: str, change: Callable[[PolicyState], tuple[PolicySet, str]]) -> PolicyState:
        """Read the newest state, apply ``change``, append it; retry when another writer took the version."""
        for attempt in range(1, _SET_ATTEMPTS + 1):
            state = await self.repository.state(account_id) or PolicyState.default(account_id)
            policy, kind = change(state)
            policy.check()
            check_document(policy)
            try:
                self.scanners.get(policy.custom)  # compiles (and caches) the account's custom detectors
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            try:
                await self.repository.add(policy, kind)
            except ConcurrentUpdate:
                if attempt == _SET_ATTEMPTS:
                    raise
                continue
            if kind == SHADOW:
                new_state = PolicyState(state.enforced, policy, policy.version)
            elif kind == DISCARD:
                new_state = PolicyState(state.enforced, None, policy.version)
            else:
                new_state = PolicyState(policy, None, policy.version)
            self.cache.offer(new_state)
            self.changes.publish(new_state)
            log.info(
                "policy changed",
                extra={"account_id": account_id, "policy_version": policy.version, "kind": kind},
            )
            return new_state
        raise AssertionError("unreachable")  # pragma: no cover

    async def _state(self, account_id: str) -> PolicyState:
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

    def _loaded(self, account_id: str, load: asyncio.Future[PolicyState]) -> None:
        self._loads.pop(account_id, None)
        if not load.cancelled():
            load.exception()  # retrieved here, so an error nobody awaited any more is not reported as lost

    async def _load(self, account_id: str) -> PolicyState:
        try:
            loaded = await self.repository.state(account_id)
        except StorageUnavailable:
            stale = self.cache.stale(account_id)
            if stale is None:
                raise
            log.warning(
                "policy database unavailable; serving the cached policy",
                extra={"account_id": account_id, "policy_version": stale.enforced.version},
            )
            return self.cache.offer(stale)  # trusted for another TTL: an outage is not retried on every request
        return self.cache.offer(loaded or PolicyState.default(account_id))
