"""Group commit for Authorize: the holds of concurrent callers placed in ONE transaction, each with its own answer.

Why: Authorize is on every request's path, and a transaction per hold (BEGIN, the hold insert, two guarded
updates, the outbox row, COMMIT, each a trip through SQLAlchemy and to the database) was most of billing's CPU per
request. Here the callers that arrive while a transaction is running are served together by the next one, with a
fixed number of statements however many they are:

1. the holds that already exist among the batch's request ids (a retried Authorize is a replay, not a new hold);
2. the batch's keys with their wallets, in one read, locked (PostgreSQL ``FOR UPDATE`` in (account, key) order; on
   SQLite the transaction holds the database's write lock), so what is decided from them cannot be overtaken by
   another replica, the usage consumer or the sweeper;
3. the budgets of the batch's accounts (budgets.py), in one read, locked after the wallets and keys (the order every
   writer takes them in); and, for the batch's keys with an RPM limit, how many holds each placed in the last 60 s
   (the holds table is the sliding window's log: read after the key rows are locked, so two billing replicas
   count each other's holds and a key gets at most its RPM however many replicas serve it);
4. the decisions, in arrival order, in memory — the same guards the projections apply: a hold is placed only while
   balance − held covers it (and, for a key with a limit, limit − usage − held; for every budget of the key's chain,
   limit − spent in the period − held; for a key with an RPM, fewer than RPM holds in the last 60 s, else 429 with
   the seconds until the oldest leaves the window), and never while the balance is negative (a capture above its
   hold went beyond the money; the account must be topped up first). A refusal changes nothing, so it never affects
   another caller. A placed hold records the budgets it counts against on its HoldPlaced event;
5. one UPDATE per wallet, per key and per budget (the batch's sums), one INSERT of the hold rows and one of their
   outbox rows.

The rows written are what :mod:`~tollgate_billing.projections` makes of the same HoldPlaced events, so a rebuild from
the log yields the same tables. A batch that fails in the database (not a refusal: e.g. a deadlock with another
replica) is retried one caller per transaction, so one caller's failure is only ever its own; a caller's own
transaction that fails transiently (PostgreSQL serialization failure or deadlock, a lost connection, a busy SQLite)
is tried again, up to ``RETRIES`` times after a short jittered pause, before the error reaches the caller (503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tollgate.events.v1 import billing_pb2
from tollgate_common.bulk import insert_rows

from . import repository
from .budgets import BudgetState, in_chain, period_bounds
from .domain import HoldStatus, HoldView
from .errors import BillingError, ConcurrentUpdate, InsufficientBalance, InvalidApiKey, KeyLimitExceeded, RateLimited
from .tables import accounts, api_keys, budgets, holds, messaging, wallets

__all__ = ["HoldWriter", "PendingHold"]

log = logging.getLogger(__name__)

#: Callers served by one transaction at most (the rest wait for the next one).
MAX_BATCH = 256
#: A caller's own transaction is tried this many more times when it fails transiently (see _transient).
RETRIES = 3
#: Pause before retry n (seconds, n = 1, 2, …): BASE × 2^(n−1), with full jitter, so contending replicas spread out.
RETRY_BASE_SECONDS = 0.02
#: PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})

_HOLD_COLUMNS = ("hold_id", "account_id", "key_id", "model", "amount_nanos", "status", "captured_nanos",
                 "released_nanos", "refunded_nanos", "usage_event_id", "needs_reconciliation", "created_at_unix_ms",
                 "expires_at_unix_ms", "budget_ids")

_EXISTING = select(holds.c.hold_id, holds.c.account_id, holds.c.key_id, holds.c.amount_nanos, holds.c.status,
                   holds.c.captured_nanos, holds.c.expires_at_unix_ms).where(
    holds.c.hold_id.in_(bindparam("p_ids", expanding=True)))
#: Each key with its account's wallet, both rows locked in (account, key) order: the usage consumer locks wallets
#: (sorted) before keys, and a capture touches a key only with its own account's wallet, so the two cannot deadlock.
_KEYS_AND_WALLETS = (
    select(api_keys.c.key_id, api_keys.c.has_limit, api_keys.c.limit_nanos, api_keys.c.usage_nanos,
           api_keys.c.held_nanos.label("key_held"), api_keys.c.team, api_keys.c.project, api_keys.c.rate_limit_rpm,
           wallets.c.account_id,
           wallets.c.balance_nanos,
           wallets.c.held_nanos.label("wallet_held"))
    .join(wallets, wallets.c.account_id == api_keys.c.account_id)
    .where(api_keys.c.key_id.in_(bindparam("p_ids", expanding=True)))
    .order_by(wallets.c.account_id, api_keys.c.key_id)
    .with_for_update()
)
#: The budgets of the batch's accounts, locked after their wallets and keys; the time zone their periods turn in.
_BUDGETS = (
    select(budgets.c.budget_id, budgets.c.account_id, budgets.c.scope, budgets.c.scope_id, budgets.c.period,
           budgets.c.limit_nanos, budgets.c.spent_nanos, budgets.c.held_nanos, budgets.c.period_start_unix_ms,
           accounts.c.time_zone)
    .join(accounts, accounts.c.account_id == budgets.c.account_id)
    .where(budgets.c.account_id.in_(bindparam("p_ids", expanding=True)))
    .order_by(budgets.c.budget_id)
    .with_for_update(of=budgets)
)
#: The RPM window: holds placed through these keys since p_since, and the oldest of them (ix_holds_key_created).
WINDOW_MS = 60_000
_RECENT = (
    select(holds.c.key_id, func.count().label("n"), func.min(holds.c.created_at_unix_ms).label("oldest"))
    .where(holds.c.key_id.in_(bindparam("p_ids", expanding=True)), holds.c.created_at_unix_ms > bindparam("p_since"))
    .group_by(holds.c.key_id)
)
_HOLD_BUDGET = (update(budgets).where(budgets.c.budget_id == bindparam("p_id"))
                .values(held_nanos=budgets.c.held_nanos + bindparam("p_held")))
_HOLD_WALLET = (update(wallets).where(wallets.c.account_id == bindparam("p_id"))
                .values(held_nanos=wallets.c.held_nanos + bindparam("p_held")))
_HOLD_KEY = (update(api_keys).where(api_keys.c.key_id == bindparam("p_id"))
             .values(held_nanos=api_keys.c.held_nanos + bindparam("p_held")))


@dataclass(frozen=True, slots=True)
class PendingHold:
    """One caller's hold: the event and its outbox row, made in the caller's context (its trace)."""

    event: billing_pb2.HoldPlaced
    outbox_row: tuple[str, str, str, str, bytes]

    @classmethod
    def of(cls, event: billing_pb2.HoldPlaced) -> PendingHold:
        return cls(event, repository.outbox_row(event))

    def decided_row(self) -> tuple[str, str, str, str, bytes]:
        """The outbox row of the event as decided (with its budgets; the headers, and trace, the caller's)."""
        if not self.event.budget_ids:
            return self.outbox_row
        topic, key, event_id, headers, _ = self.outbox_row
        return topic, key, event_id, headers, self.event.SerializeToString()


#: What a caller gets: None (its hold is placed), the hold that already had its id (a replay), or its refusal.
Outcome = HoldView | None | BillingError


class HoldWriter:
    """Places holds for concurrent Authorize calls, many per transaction. One per Billing (per process)."""

    def __init__(self, engine: AsyncEngine, turn: Callable[[], AbstractAsyncContextManager[object]]) -> None:
        self.engine = engine
        #: The process's SQLite write queue (Billing.sqlite_turn), shared with the consumer and the relay.
        self.turn = turn
        self._queue: list[tuple[PendingHold, asyncio.Future[Outcome]]] = []
        self._drainer: asyncio.Task[None] | None = None
        #: Transactions committed (for tests and benchmarks: callers per transaction = holds / batches).
        self.batches = 0

    async def place(self, pending: PendingHold) -> HoldView | None:
        """Place the hold (None), or return the existing hold with its id; raises the caller's refusal."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((pending, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="billing-hold-writer")
        outcome = await future
        if isinstance(outcome, BillingError):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        """Serve the queue one transaction at a time until it is empty (then the next caller starts a drainer)."""
        try:
            while self._queue:
                batch = [item for item in self._queue[:MAX_BATCH] if not item[1].done()]  # skip cancelled callers
                del self._queue[:MAX_BATCH]
                if batch:
                    await self._serve(batch)
        finally:
            self._drainer = None
            for _, future in self._queue:  # only if the drainer was cancelled
                _settle(future, ConcurrentUpdate("billing is stopping; retry"))
            self._queue.clear()

    async def _serve(self, batch: list[tuple[PendingHold, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._transaction([pending for pending, _ in batch])
        except asyncio.CancelledError:  # the process is stopping: nobody may wait for ever
            for _, future in batch:
                _settle(future, ConcurrentUpdate("billing is stopping; retry"))
            raise
        except Exception as exc:
            if len(batch) == 1:
                await self._retry(batch[0], exc)
                return
            for item in batch:  # alone, each caller meets only its own failure
                await self._serve([item])
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, outcome)

    async def _retry(self, item: tuple[PendingHold, asyncio.Future[Outcome]], error: Exception) -> None:
        """One caller's transaction failed: try it again while the failure is transient (the transaction rolled
        back, so a retry decides afresh on the rows as they are now), then give the caller the last error."""
        pending, future = item
        for attempt in range(1, RETRIES + 1):
            if not _transient(error) or future.done():
                break
            log.info("hold transaction failed transiently; retrying",
                     extra={"hold_id": pending.event.hold_id, "attempt": attempt, "error": type(error).__name__})
            await asyncio.sleep(random.uniform(0, RETRY_BASE_SECONDS * 2 ** (attempt - 1)))
            try:
                outcomes = await self._transaction([pending])
            except asyncio.CancelledError:
                _settle(future, ConcurrentUpdate("billing is stopping; retry"))
                raise
            except Exception as exc:
                error = exc
                continue
            _settle(future, outcomes[0])
            return
        _settle(future, error)

    async def _transaction(self, batch: Sequence[PendingHold]) -> list[Outcome]:
        events = [p.event for p in batch]
        async with self.turn(), self.engine.begin() as conn:
            existing = {row.hold_id: _view(row) for row in await conn.execute(
                _EXISTING, {"p_ids": sorted({ev.hold_id for ev in events})})}
            money: dict[str, list[int]] = {}
            keys: dict[str, list[Any]] = {}
            for row in await conn.execute(_KEYS_AND_WALLETS, {"p_ids": sorted({ev.key_id for ev in events})}):
                money.setdefault(row.account_id, [row.balance_nanos, row.wallet_held])
                keys[row.key_id] = [row.account_id, bool(row.has_limit), row.limit_nanos - row.usage_nanos,
                                    row.key_held, row.team, row.project, row.rate_limit_rpm, 0, 0]
            now = max(ev.created_at_unix_ms for ev in events)
            limits = await _budgets(conn, money, now)
            await _recent(conn, keys, now)
            outcomes: list[Outcome] = []
            placed: list[PendingHold] = []
            for pending in batch:
                outcome = _decide(pending.event, existing, money, keys, limits)
                if outcome is None:
                    placed.append(pending)
                    existing[pending.event.hold_id] = _placed_view(pending.event)
                outcomes.append(outcome)
            if not placed:
                return outcomes
            inserted = await self._write(conn, placed)
            lost = [p for p in placed if p.event.hold_id not in inserted]
            if lost:  # another replica placed holds with these ids meanwhile: give their money back, replay them
                await self._move(conn, lost, sign=-1)
                lost_ids = {p.event.hold_id for p in lost}
                twins = {row.hold_id: _view(row) for row in await conn.execute(_EXISTING, {"p_ids": sorted(lost_ids)})}
                for i, pending in enumerate(batch):
                    if outcomes[i] is None and pending.event.hold_id in lost_ids:
                        outcomes[i] = twins.get(pending.event.hold_id) or ConcurrentUpdate(
                            f"hold {pending.event.hold_id} could not be placed; retry")
            await insert_rows(conn, messaging.outbox, repository.OUTBOX_COLUMNS,
                              [p.decided_row() for p in placed if p.event.hold_id in inserted])
        self.batches += 1
        return outcomes

    async def _write(self, conn: AsyncConnection, placed: list[PendingHold]) -> set[str]:
        """Move the money and insert the hold rows; returns the hold ids actually inserted."""
        await self._move(conn, placed, sign=1)
        rows = [(ev.hold_id, ev.account_id, ev.key_id, ev.model, ev.amount_nanos, HoldStatus.OPEN.value, 0, 0, 0,
                 "", False, ev.created_at_unix_ms, ev.expires_at_unix_ms, ",".join(ev.budget_ids))
                for ev in (p.event for p in placed)]
        found = await insert_rows(conn, holds, _HOLD_COLUMNS, rows, on_conflict="ON CONFLICT DO NOTHING",
                                  returning=("hold_id",))
        return {str(row.hold_id) for row in found}

    @staticmethod
    async def _move(conn: AsyncConnection, placed: list[PendingHold], *, sign: int) -> None:
        by_wallet: dict[str, int] = {}
        by_key: dict[str, int] = {}
        by_budget: dict[str, int] = {}
        for ev in (p.event for p in placed):
            by_wallet[ev.account_id] = by_wallet.get(ev.account_id, 0) + sign * ev.amount_nanos
            by_key[ev.key_id] = by_key.get(ev.key_id, 0) + sign * ev.amount_nanos
            for budget_id in ev.budget_ids:
                by_budget[budget_id] = by_budget.get(budget_id, 0) + sign * ev.amount_nanos
        await _update(conn, _HOLD_WALLET, by_wallet)
        await _update(conn, _HOLD_KEY, by_key)
        await _update(conn, _HOLD_BUDGET, by_budget)


async def _update(conn: AsyncConnection, statement: Any, moves: dict[str, int]) -> None:
    rows = [{"p_id": row_id, "p_held": held} for row_id, held in sorted(moves.items()) if held]
    if rows:
        await conn.execute(statement, rows[0] if len(rows) == 1 else rows)


async def _recent(conn: AsyncConnection, keys: dict[str, list[Any]], now_unix_ms: int) -> None:
    """Fill each rate-limited key's [.., holds in the window, oldest of them] (no read when no key has an RPM)."""
    limited = sorted(key_id for key_id, key in keys.items() if key[6] > 0)
    if not limited:
        return
    for row in await conn.execute(_RECENT, {"p_ids": limited, "p_since": now_unix_ms - WINDOW_MS}):
        keys[row.key_id][7:9] = [int(row.n), int(row.oldest)]


async def _budgets(conn: AsyncConnection, money: dict[str, list[int]], now_unix_ms: int
                   ) -> dict[str, list[BudgetState]]:
    """account id → its budgets, with the spend of the period containing ``now`` (0 once the stored one is past)."""
    limits: dict[str, list[BudgetState]] = {}
    if not money:
        return limits
    starts: dict[tuple[str, str], int] = {}
    for row in await conn.execute(_BUDGETS, {"p_ids": sorted(money)}):
        zone = (row.period, row.time_zone)
        if zone not in starts:
            starts[zone] = period_bounds(row.period, row.time_zone, now_unix_ms)[0]
        spent = row.spent_nanos if row.period_start_unix_ms >= starts[zone] else 0
        limits.setdefault(row.account_id, []).append(
            BudgetState(row.budget_id, row.scope, row.scope_id, row.period, row.limit_nanos, spent, row.held_nanos))
    return limits


def _decide(ev: billing_pb2.HoldPlaced, existing: dict[str, HoldView], money: dict[str, list[int]],
            keys: dict[str, list[Any]], limits: dict[str, list[BudgetState]]) -> Outcome:
    """One caller's decision against the batch's state so far (and, if placed, its effect on that state)."""
    del ev.budget_ids[:]  # decided afresh (a batch retried caller by caller decides again)
    earlier = existing.get(ev.hold_id)
    if earlier is not None:
        return earlier
    key = keys.get(ev.key_id)
    if key is None or key[0] != ev.account_id:
        return InvalidApiKey("invalid API key")
    wallet = money[ev.account_id]
    if wallet[0] < 0:
        return InsufficientBalance("the account's balance is negative (usage went beyond its holds): "
                                   "add credits to continue")
    if wallet[0] - wallet[1] < ev.amount_nanos:
        return InsufficientBalance("the account's available balance does not cover this request's maximum cost")
    _, has_limit, limit_left, held, team, project, rpm, recent, oldest = key
    if rpm > 0 and recent >= rpm:
        retry_after = max(1, math.ceil((oldest + WINDOW_MS - ev.created_at_unix_ms) / 1000))
        return RateLimited(f"rate limit of {rpm} requests per minute reached", retry_after=retry_after)
    if has_limit and limit_left - held < ev.amount_nanos:
        return KeyLimitExceeded("the API key's spend limit does not cover this request's maximum cost")
    chain = [b for b in limits.get(ev.account_id, ())
             if in_chain(b.scope, b.scope_id, account_id=ev.account_id, key_id=ev.key_id, team=team, project=project)]
    for budget in chain:
        refused = budget.refusal(ev.amount_nanos)
        if refused is not None:
            return refused
    wallet[1] += ev.amount_nanos
    key[3] += ev.amount_nanos
    key[7] += 1
    key[8] = min(oldest, ev.created_at_unix_ms) if recent else ev.created_at_unix_ms
    for budget in chain:
        budget.held_nanos += ev.amount_nanos
        ev.budget_ids.append(budget.budget_id)
    return None


def _transient(error: Exception) -> bool:
    """A database failure that a new transaction may not meet: PostgreSQL's serialization and deadlock aborts (the
    other replica's transaction won), a dropped connection, SQLite busy beyond its timeout."""
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(orig) or "database is busy" in str(orig)


def _view(row: Any) -> HoldView:
    return HoldView(row.hold_id, row.account_id, row.key_id, row.amount_nanos, HoldStatus(row.status),
                    row.captured_nanos, row.expires_at_unix_ms)


def _placed_view(ev: billing_pb2.HoldPlaced) -> HoldView:
    return HoldView(ev.hold_id, ev.account_id, ev.key_id, ev.amount_nanos, HoldStatus.OPEN, 0,
                    ev.expires_at_unix_ms)


def _settle(future: asyncio.Future[Outcome], outcome: Outcome | BaseException) -> None:
    if future.done():  # the caller went away (cancelled); nothing to tell
        return
    if isinstance(outcome, BaseException) and not isinstance(outcome, BillingError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
