"""Policy changes pushed to whoever decides in process (ingress): the fan-out behind ``WatchPolicies``.

Every change this replica writes (``PolicyService._change``) is offered to each open watch at once, after the
version is committed; a watch also gets a heartbeat every ``heartbeat_seconds``, so the watcher can tell a quiet
stream from a dead one and stop trusting what it holds (ingress then asks policy per request, see ingress's
``policy_state.py``). A watcher that falls :data:`MAX_QUEUED` changes behind is cut off (its stream ends) rather
than buffered without bound: it reconnects and re-reads what it needs, which is always correct.

Only this replica's writes are pushed. With several policy replicas a change written by another reaches a
watcher by the watcher's own re-read (``GetPolicyState`` reads the database; ingress re-reads an account at least
every ``INGRESS_POLICY_MAX_AGE_SECONDS``), the same bound policy's own cache gives today.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from tollgate_dlp.state import PolicyState

__all__ = ["MAX_QUEUED", "PolicyChanges"]

log = logging.getLogger(__name__)

#: Changes one watcher may have waiting before it is cut off.
MAX_QUEUED = 1024

_CUT = None  # what a cut-off watcher's queue ends with


class PolicyChanges:
    """Open watches and the fan-out of each change to them."""

    def __init__(self, heartbeat_seconds: float = 5.0) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self._watchers: set[asyncio.Queue[PolicyState | None]] = set()
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def close(self) -> None:
        """End every watch (at stop: an open stream would otherwise hold the server for its whole grace)."""
        self._closed = True
        for queue in list(self._watchers):
            self._cut(queue)

    def _cut(self, queue: asyncio.Queue[PolicyState | None]) -> None:
        self._watchers.discard(queue)
        if queue.full():
            queue.get_nowait()  # room for the end marker
        queue.put_nowait(_CUT)

    def publish(self, state: PolicyState) -> None:
        """Offer ``state`` (just committed) to every watch; never waits."""
        for queue in list(self._watchers):
            try:
                queue.put_nowait(state)
            except asyncio.QueueFull:
                self._cut(queue)
                log.warning("a policy watcher fell behind and was cut off", extra={"queued": MAX_QUEUED})

    async def watch(self) -> AsyncIterator[PolicyState | None]:
        """Each change as it comes, and None as a heartbeat every ``heartbeat_seconds``; ends when cut off."""
        if self._closed:
            return
        queue: asyncio.Queue[PolicyState | None] = asyncio.Queue(MAX_QUEUED)
        self._watchers.add(queue)
        try:
            yield None  # at once: the watcher knows the stream is open before it reads any state
            while True:
                try:
                    async with asyncio.timeout(self.heartbeat_seconds):
                        state = await queue.get()
                except TimeoutError:
                    yield None
                    continue
                if state is _CUT:
                    return
                yield state
        finally:
            self._watchers.discard(queue)
