"""PolicyDecided events: how each decision reaches Kafka or the outbox without being lost.

What an event holds (request id, account, the verdict, counts and HMACs of matches, never the text) is built by
:func:`tollgate_dlp.decisions.decided_event`, shared with ingress, which decides in process too. How it is made
durable before Inspect answers (Kafka acknowledged, else the outbox, group-committed; in memory while both are
away) is :class:`tollgate_common.group_commit.GroupCommitLog`'s, the same writer ingress uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tollgate_common.events import Envelope, Topics
from tollgate_common.group_commit import DIRECT_RETRY_SECONDS, MAX_BACKLOG, PUBLISH_TIMEOUT, GroupCommitLog
from tollgate_dlp.decisions import DEV_HASH_KEY
from tollgate_dlp.errors import StorageUnavailable

from .repository import PolicyRepository

__all__ = [
    "DEV_HASH_KEY",
    "DIRECT_RETRY_SECONDS",
    "MAX_BACKLOG",
    "PUBLISH_TIMEOUT",
    "DecisionLog",
]


class DecisionLog(GroupCommitLog):
    """Policy's decisions: to ``tollgate.policy.v1``, else policy's outbox (``PolicyRepository.add_events``)."""

    def __init__(
        self,
        repository: PolicyRepository,
        on_written: Callable[[], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        super().__init__(
            Topics.POLICY, self._add_events, unavailable=(StorageUnavailable,), on_written=on_written,
            what="decisions", clock=clock,
        )

    async def _add_events(self, events: Sequence[Envelope]) -> None:
        await self.repository.add_events(events)  # looked up per write: the repository may be replaced (tests)
