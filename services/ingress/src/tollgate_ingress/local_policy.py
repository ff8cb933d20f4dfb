"""DLP decided in ingress's own process: the same engine as policy (``tollgate_dlp``), no hop.

What policy's ``Inspect`` does, done here with the account's state from :mod:`tollgate_ingress.policy_state`:
scan the texts (built-in and custom detectors, Hyperscan when importable; from ``offload_chars`` characters on in
a small thread pool, each account within its share, as policy does), apply the policy for (team, key), redact, and
evaluate the pending shadow beside it. The decision is recorded before the answer counts: the ``PolicyDecided``
events (the very events policy would write, built by ``tollgate_dlp.decisions.decided_event``, the shadow's too,
signed as ingress) are acknowledged by Kafka on ``tollgate.policy.v1`` or else committed to ingress's outbox —
group-committed, so concurrent requests share one produce — before the request goes to the router or the answer
to the client. The match hashes use policy's key (``INGRESS_POLICY_HASH_KEY`` = policy's ``POLICY_HASH_KEY``), so
the same card hashes the same whoever decided. Logs and events carry counts, never text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import InterfaceError, OperationalError
from tollgate_common.events import Envelope, Topics
from tollgate_common.group_commit import GroupCommitLog
from tollgate_dlp import inspection as dlp
from tollgate_dlp.decisions import Decision, decided_event, match_hasher
from tollgate_dlp.errors import ScanCapacityExhausted
from tollgate_dlp.limits import AccountGate, Limits
from tollgate_dlp.scanners import Scan, ScannerCache, scan_texts
from tollgate_dlp.state import PolicyState

from .errors import InvalidRequest, RateLimited
from .policy_client import Action, Finding, Inspection, RoutingConstraints, Verdict
from .publisher import SERVICE, UsagePublisher

__all__ = ["LocalPolicy", "decision_log"]

log = logging.getLogger(__name__)

_VERDICT = {v: Verdict(v.value) for v in dlp.Verdict}
_NO_CONSTRAINTS = RoutingConstraints()


def decision_log(publisher: UsagePublisher) -> GroupCommitLog:
    """Ingress's decisions: to ``tollgate.policy.v1`` with the publisher's producer (signed as ingress), else into
    ingress's outbox (one transaction per batch), which the publisher's relay publishes."""

    async def write_outbox(events: Sequence[Envelope]) -> None:
        async with publisher.sessions.begin() as session:
            await publisher.tables.add_many_to_outbox(session, Topics.POLICY, events)

    return GroupCommitLog(
        Topics.POLICY, write_outbox, unavailable=(OperationalError, InterfaceError, OSError),
        on_written=publisher.wake_relay, what="decisions",
    )


@functools.lru_cache(maxsize=1024)
def _action(value: str) -> Action:
    return Action(value)


def _constraints(result: dlp.Inspection) -> RoutingConstraints:
    r = result.routing
    if not (r.allowed_providers or r.denied_providers or r.allowed_regions or r.allowed_models):
        return _NO_CONSTRAINTS
    return RoutingConstraints(r.allowed_providers, r.denied_providers, r.allowed_regions, r.allowed_models)


class LocalPolicy:
    """Decides one request's texts under a held :class:`PolicyState` and records the decision durably."""

    def __init__(
        self, publisher: UsagePublisher, *, hash_key: bytes, limits: Limits | None = None
    ) -> None:
        self.publisher = publisher
        self.decisions = decision_log(publisher)
        self.hash = match_hasher(hash_key)
        self.limits = limits or Limits()
        self.scanners = ScannerCache()
        self._pool = ThreadPoolExecutor(self.limits.scan_threads, thread_name_prefix="ingress-dlp")
        self._gate = AccountGate(self.limits.large_scans_per_account, self.limits.large_scan_queue_per_account)

    async def close(self) -> None:
        """After the last request: flush queued decisions, stop the scan threads."""
        await self.decisions.flush()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def inspect(
        self,
        state: PolicyState,
        request_id: str,
        key_id: str,
        *,
        team: str = "",
        model: str = "",
        texts: Sequence[str] = (),
        response: bool = False,
        sequence: int = 0,
    ) -> Inspection:
        """As policy's Inspect answers it (see the module docstring); the decision is durable when this returns."""
        chars = sum(map(len, texts))
        if len(texts) > self.limits.max_texts or chars > self.limits.max_chars:
            raise InvalidRequest(
                f"Inspect takes at most {self.limits.max_texts} texts and {self.limits.max_chars} characters; "
                f"got {len(texts)} texts and {chars} characters",
                code="input_too_large",
            )
        account_id = state.account_id
        started = time.perf_counter()
        scanners = self._scanners(state)
        if chars >= self.limits.offload_chars:
            try:
                async with self._gate.slot(account_id):
                    loop = asyncio.get_running_loop()
                    matches, shadow_matches = await loop.run_in_executor(self._pool, scan_texts, scanners, texts)
            except ScanCapacityExhausted as exc:
                raise RateLimited(str(exc), code=exc.reason, retry_after_seconds=exc.retry_after) from None
        else:
            matches, shadow_matches = scan_texts(scanners, texts)
        scan_micros = int((time.perf_counter() - started) * 1_000_000)
        checked_model = "" if response else model
        result = dlp.inspect(texts, state.enforced, team=team, key_id=key_id, model=checked_model, matches=matches)
        if texts or model:
            direction = "response" if response else "request"
            decision = Decision(
                request_id=request_id, account_id=account_id, key_id=key_id, team=team, model=model,
                direction=direction, sequence=sequence, scanned_bytes=sum(len(t.encode()) for t in texts),
                scan_micros=scan_micros,
            )
            events = [decided_event(decision, result, texts, self.hash, shadow=False, service=SERVICE)]
            if state.shadow is not None:
                shadow = dlp.inspect(
                    texts, state.shadow, team=team, key_id=key_id, model=checked_model, matches=shadow_matches
                )
                events.append(decided_event(decision, shadow, texts, self.hash, shadow=True, service=SERVICE))
            self.decisions.kafka.producer = self.publisher.connected_producer
            await self.decisions.record(events)
        if result.verdict is dlp.Verdict.BLOCK and log.isEnabledFor(logging.INFO):
            log.info(
                "inspected",
                extra={
                    "request_id": request_id, "account_id": account_id, "verdict": result.verdict.value,
                    "rule": result.rule, "findings": dict(result.counts), "policy_version": result.policy_version,
                    "policy_scope": result.scope, "texts": len(texts),
                },
            )
        return Inspection(
            verdict=_VERDICT[result.verdict],
            rule=result.rule,
            findings=tuple(Finding(f.type, f.start, f.end, _action(f.action.value)) for f in result.findings),
            redacted_texts=result.redacted_texts,
            scan_responses=result.scan_responses and not response,
            constraints=_constraints(result),
        )

    def _scanners(self, state: PolicyState) -> tuple[Scan, Scan | None]:
        """The enforced policy's scanner, and the shadow's when its detectors differ (policy's rule)."""
        enforced = self.scanners.get(state.enforced.custom)
        if state.shadow is None or state.shadow.custom == state.enforced.custom:
            return enforced, None
        return enforced, self.scanners.get(state.shadow.custom)
