"""Each account's current DLP policy, held in ingress so a request is decided in process (no hop to policy).

Policy owns the documents; this is a cache of them kept current by policy itself:

- **First sight**: an account not held (or held too long, below) is read with ``GetPolicyState``, which reads
  policy's database. Concurrent requests for one account share that read.
- **Changes**: one ``WatchPolicies`` stream per ingress process carries every change policy commits (the account's
  whole new state) and a heartbeat every few seconds. A pushed state replaces the held one unless it is older
  (``head``), so a slow read racing a change cannot undo it.
- **Trust**: held state is used only while the watch is *healthy*: open, and heard from within three heartbeat
  intervals. A state read before the current watch opened is not used (a change in between would have been
  missed), so every reconnect re-reads each account on its next request. Whatever happens, an account is re-read
  at least every ``max_age`` seconds (``INGRESS_POLICY_MAX_AGE_SECONDS``, 30): that bounds a change written on
  another policy replica, whose watchers this one's stream does not reach.
- **Otherwise** :meth:`PolicyStates.get` answers None and the caller asks policy's ``Inspect`` for that request
  (exact, and fails closed with 503 when policy is away): ingress never decides with a state it cannot vouch for.

So a change reaches every ingress within the push's latency (milliseconds) while the watch is up, and within
``max_age`` in every case; a dead stream is noticed within three heartbeats, after which every request asks policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tollgate.policy.v1 import policy_service_pb2 as ppb
from tollgate.policy.v1 import policy_service_pb2_grpc
from tollgate_dlp.state import PolicyState
from tollgate_dlp.wire import state_from_update

from .channels import CallMetadata

__all__ = ["MAX_ACCOUNTS", "PolicyStates"]

log = logging.getLogger(__name__)

#: Accounts held at most (least recently used dropped first; a dropped one is re-read on its next request).
MAX_ACCOUNTS = 100_000
#: A watch is dead after this many heartbeat intervals without a message.
_MISSED_HEARTBEATS = 3
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


@dataclass(slots=True)
class _Held:
    state: PolicyState
    #: When policy last vouched for it (read or pushed), on the process's monotonic clock.
    at: float
    #: The watch it was vouched for under: a state from before the current watch opened is not trusted.
    watch: int


class PolicyStates:
    """Account id → current :class:`PolicyState`, fed by ``GetPolicyState`` and ``WatchPolicies``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: CallMetadata,
        *,
        timeout: float,
        max_age: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._metadata = metadata
        self.timeout = timeout
        self.max_age = max_age
        self.clock = clock
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._loads: dict[str, asyncio.Future[PolicyState | None]] = {}
        #: Counts opened watches; 0 while none has opened.
        self._watch = 0
        self._open = False
        self._heard = 0.0
        self._heartbeat = 5.0
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching (in the background: policy may not be up yet; requests ask Inspect meanwhile)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch_forever(), name="policy-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._open = False

    def forget(self, account_id: str) -> None:
        """Drop what is held for the account (this replica just changed its policy through policy's API): its next
        request re-reads it, so a change made here applies to the very next request here, push or no push."""
        self._held.pop(account_id, None)

    # --- the request path --------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """The watch is open and was heard from recently enough that no pushed change can have been missed."""
        return self._open and self.clock() - self._heard <= _MISSED_HEARTBEATS * self._heartbeat

    async def get(self, account_id: str) -> PolicyState | None:
        """The account's current state, or None when this replica cannot vouch for one (ask policy instead)."""
        if not self.healthy():
            self.start()  # no-op once started (lazily here when built outside a running loop)
            return None
        held = self._held.get(account_id)
        if held is not None and held.watch == self._watch and self.clock() - held.at <= self.max_age:
            self._held.move_to_end(account_id)
            return held.state
        pending = self._loads.get(account_id)
        if pending is None:
            pending = asyncio.ensure_future(self._read(account_id))
            self._loads[account_id] = pending
            pending.add_done_callback(functools.partial(self._read_done, account_id))
        return await asyncio.shield(pending)  # a cancelled request does not cancel the others' read

    def _read_done(self, account_id: str, read: asyncio.Future[PolicyState | None]) -> None:
        self._loads.pop(account_id, None)
        if not read.cancelled():
            read.exception()  # retrieved, so an error nobody awaited any more is not reported as lost

    async def _read(self, account_id: str) -> PolicyState | None:
        watch = self._watch  # the watch open before the read: a change after it is pushed on this very watch
        try:
            update = await self._stub.GetPolicyState(
                ppb.GetPolicyStateRequest(account_id=account_id), timeout=self.timeout, metadata=self._metadata()
            )
            state = state_from_update(update)
        except grpc.aio.AioRpcError as exc:
            log.warning("reading a policy state failed; asking policy per request",
                        extra={"account_id": account_id, "code": exc.code().name})
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("policy sent a state this ingress cannot read; asking policy per request",
                      extra={"account_id": account_id, "error_type": type(exc).__name__})
            return None
        if watch != self._watch or not self.healthy():
            return None  # the watch broke meanwhile: a change may have gone unseen
        return self._offer(state, watch)

    def _offer(self, state: PolicyState, watch: int) -> PolicyState:
        """Hold ``state`` unless a newer one (higher head) is held under the same watch; return the one held."""
        held = self._held.get(state.account_id)
        if held is not None and held.watch == watch and held.state.head > state.head:
            return held.state
        self._held[state.account_id] = _Held(state, self.clock(), watch)
        self._held.move_to_end(state.account_id)
        if len(self._held) > MAX_ACCOUNTS:
            self._held.popitem(last=False)
        return state

    # --- the watch ---------------------------------------------------------------------------------------------
    async def _watch_forever(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            try:
                await self._watch_once()
                backoff = _BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if self._open or backoff == _BACKOFF_FIRST:
                    log.warning("policy watch broken; asking policy per request until it is back",
                                extra={"code": exc.code().name})
            except Exception as exc:  # a bug must not end the watch for good
                log.error("policy watch failed", extra={"error_type": type(exc).__name__})
            self._open = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _watch_once(self) -> None:
        call = self._stub.WatchPolicies(ppb.WatchPoliciesRequest(), metadata=self._metadata())
        try:
            async for update in call:
                self._heard = self.clock()
                if not self._open:
                    # The first message (a heartbeat) says the stream is registered with policy: from now on every
                    # change is pushed here, so reads made from now on can be trusted.
                    self._watch += 1
                    self._open = True
                    log.info("policy watch open", extra={"watch": self._watch})
                if update.heartbeat:
                    if update.heartbeat_interval_ms > 0:
                        self._heartbeat = update.heartbeat_interval_ms / 1000
                    continue
                try:
                    state = state_from_update(update)
                except (ValueError, KeyError, TypeError) as exc:
                    # Never keep serving the account's old state after a change we could not read.
                    self._held.pop(update.account_id, None)
                    log.error("policy pushed a state this ingress cannot read",
                              extra={"account_id": update.account_id, "error_type": type(exc).__name__})
                    continue
                self._offer(state, self._watch)
        finally:
            self._open = False
            call.cancel()
