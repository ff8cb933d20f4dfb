"""What one tenant may ask of policy: caps on Inspect's input and on a policy document, and a fair share of the
threads that scan large inputs.

Policy is shared by every account, so no account may make it slow for the others:

- **Inspect input** (:class:`Limits`): at most ``max_texts`` texts and ``max_chars`` characters per call, refused
  before any scanning with INVALID_ARGUMENT ``input_too_large``. The defaults sit far above any model's context
  window (4 Mi characters ≈ 1 M tokens), so only abuse meets them.
- **Large inputs are scanned off the event loop**: from ``offload_chars`` characters on, the scan runs in a small
  thread pool, so one big prompt does not stall every other request's Inspect on the loop.
- **Fair share** (:class:`AccountGate`): each account gets at most ``large_scans_per_account`` of those threads at
  once, and at most ``large_scan_queue_per_account`` more of its large Inspects may wait; past that it gets
  RESOURCE_EXHAUSTED ``scan_capacity_exhausted`` with ``retry-after``, while other accounts keep their share.
- **A policy document** (:func:`check_document`, on every write, never on reading what is stored): custom detectors,
  keywords, conditionals, routing lists and scopes are capped (:data:`DOCUMENT_CAPS`), as is the JSON a scope is
  sent as, so an account cannot make its scanner or its resolution arbitrarily expensive. INVALID_ARGUMENT
  ``limit_exceeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .errors import LimitExceeded, ScanCapacityExhausted

if TYPE_CHECKING:
    from .document import PolicySet

__all__ = ["DOCUMENT_CAPS", "MAX_DOCUMENT_CHARS", "AccountGate", "Limits", "check_document"]

#: The JSON of one scope (PutScopePolicy's ``document_json``), in characters.
MAX_DOCUMENT_CHARS: Final = 256 * 1024
#: Caps on a policy document, per account (scopes, custom detectors) or per scope.
DOCUMENT_CAPS: Final[Mapping[str, int]] = {
    "scopes": 1000,  # team and key scopes together, besides the account's
    "custom_detectors": 32,
    "keywords": 500,  # per custom detector
    "when_found": 32,  # per scope
    "routing_entries": 256,  # per routing list, in routing and in each when_found
}


@dataclass(frozen=True)
class Limits:
    """Inspect's caps and the large-scan pool (see the module docstring). ``Settings`` builds one from POLICY_*."""

    max_texts: int = 4096
    max_chars: int = 4 * 1024 * 1024
    offload_chars: int = 64 * 1024
    scan_threads: int = 2
    large_scans_per_account: int = 1
    large_scan_queue_per_account: int = 4


class AccountGate:
    """Per account, at most ``running`` holders at once and ``waiting`` more queued; the next is refused.

    Accounts are independent: one account's queue never delays another's turn (the thread pool behind the gate is
    shared, and sized so that several accounts' large scans run side by side). Idle accounts leave no entry.
    """

    def __init__(self, running: int, waiting: int) -> None:
        self.running = running
        self.waiting = waiting
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, account_id: str) -> AsyncIterator[None]:
        entry = self._slots.get(account_id)
        if entry is None:
            entry = self._slots[account_id] = (asyncio.Semaphore(self.running), [0])
        semaphore, users = entry
        if users[0] >= self.running + self.waiting:
            raise ScanCapacityExhausted(
                f"account {account_id!r} already has {users[0]} large inspections running or waiting; retry shortly"
            )
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[account_id]


def _cap(name: str, count: int, where: str) -> None:
    limit = DOCUMENT_CAPS[name]
    if count > limit:
        raise LimitExceeded(f"{where} has {count} {name.replace('_', ' ')}; at most {limit} are allowed")


def check_document(policy: PolicySet) -> None:
    """Every cap of :data:`DOCUMENT_CAPS` on ``policy``; LimitExceeded naming the first one exceeded."""
    _cap("scopes", sum(1 for scope in policy.scopes if scope != "account"), "the policy")
    _cap("custom_detectors", len(policy.custom), "the account")
    for custom in policy.custom:
        _cap("keywords", len(custom.keywords), custom.name)
    for scope, settings in policy.scopes.items():
        _cap("when_found", len(settings.when_found), scope)
        routings = [settings.routing, *(c.routing for c in settings.when_found)]
        longest = max(len(getattr(r, name)) for r in routings for name in _ROUTING_LISTS)
        _cap("routing_entries", longest, scope)


_ROUTING_LISTS: Final = ("allowed_models", "allowed_providers", "denied_providers", "allowed_regions")
