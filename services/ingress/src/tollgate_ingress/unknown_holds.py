"""Closing a hold that may exist: Authorize failed in a way that does not say whether billing placed it.

Why: when ingress stops waiting for ``Authorize`` (its deadline passed under load, the connection broke, the
caller went away, billing answered INTERNAL), billing may still commit the hold a moment later. Nobody would then
send the usage event that closes it, so at its TTL the hold would be captured in full: the caller, who was
answered 504/503 and never served, would pay the request's maximum cost.

So for such a request ingress publishes the usage event itself, in the background: zero tokens, outcome FAILED,
``hold_id`` = the request id, exactly the event of a request whose upstream failed before answering. Billing then
releases the hold if it exists; if the hold does not exist (yet), billing records a closed zero hold under that id,
and a late ``Authorize`` with the same request id is answered as a replay of it, placing nothing. Either order
charges nothing. The event needs the key's account, which the failed call did not return: it is looked up with
``GetKeyInfo``, retried with backoff while billing is unreachable; an unknown or revoked key can hold nothing, so
nothing is published for it.

Limit: these closings live in the process. If ingress dies before one is published, the hold (if any) is captured
at its TTL and flagged ``needs_reconciliation``, as for any usage event lost before it was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from .billing_client import Authorization, BillingClient
from .domain import ChatRequest, Outcome
from .errors import AuthenticationFailed, IngressError
from .publisher import UsagePublisher
from .settlement import Settlement

__all__ = ["UnknownHolds"]

log = logging.getLogger(__name__)

#: Seconds between attempts to learn the key's account while billing does not answer (the last one repeats).
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Give up after this long (billing's default hold TTL: past it, the sweeper has captured the hold anyway).
GIVE_UP_AFTER_SECONDS = 600.0


class UnknownHolds:
    """Background closings of holds whose placement is unknown; at most one per request id."""

    def __init__(
        self,
        billing: BillingClient,
        publisher: UsagePublisher,
        *,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        give_up_after: float = GIVE_UP_AFTER_SECONDS,
    ) -> None:
        self.billing = billing
        self.publisher = publisher
        self.retry_delays = tuple(retry_delays)
        self.give_up_after = give_up_after
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def close_later(self, api_key: str, request_id: str, request: ChatRequest, models: Sequence[str]) -> None:
        if request_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._close(api_key, request_id, request, models[0]))
        self._tasks[request_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(request_id, None))

    async def _close(self, api_key: str, request_id: str, request: ChatRequest, model: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        attempt = 0
        while True:
            try:
                info = await self.billing.key_info(api_key)
                break
            except AuthenticationFailed:
                return  # no such key (any more): no hold can have been placed for it
            except IngressError as exc:
                delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
                attempt += 1
                if loop.time() + delay > deadline:
                    log.error("gave up closing a hold of unknown placement", extra={
                        "request_id": request_id, "error": type(exc).__name__})
                    return
                await asyncio.sleep(delay)
        auth = Authorization(account_id=info.account_id, key_id=info.key_id, hold_id=request_id, team="",
                             project="", hold_model=model)
        Settlement(self.publisher, request, request_id, auth).close(Outcome.FAILED)
        log.info("closed a hold of unknown placement with a zero usage event", extra={"request_id": request_id})

    async def aclose(self) -> None:
        """On shutdown: whatever is still waiting for billing is dropped (see the module's limit)."""
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
