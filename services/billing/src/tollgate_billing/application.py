"""Billing's commands and queries: the only place that orchestrates the domain and the repository.

Every command follows one shape: read what the decision needs, let :mod:`~tollgate_billing.domain` decide (an event,
or an error), then ``repository.record`` the event — projection (guards on) plus outbox — in ONE transaction, and
tell the relay there is something to publish. Queries read the tables the projections maintain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from google.protobuf.message import Message
from prometheus_client import Counter, Gauge
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from tollgate.events.v1 import billing_pb2, usage_pb2
from tollgate_common.db import READ_ONLY
from tollgate_common.ids import new_id

from . import domain, repository
from .budgets import TightestLimit, in_chain, tightest_limit
from .domain import ApiKeyGrant, PriceBook
from .errors import (
    AccountNotFound,
    AmountOutOfRange,
    ConcurrentUpdate,
    CurrencyMismatch,
    IdempotencyKeyReused,
    InvalidApiKey,
    InvalidArgument,
    PriceBookUnavailable,
    RequestIdConflict,
)
from .hold_writer import HoldWriter, PendingHold
from .ledger_cursor import ledger_cursor, ledger_page_token
from .memberships import check_membership
from .repository import AccountRow, KeyRow, LedgerRow, WalletRow
from .usage_lag import UsageLag

__all__ = [
    "AddCreditsResult",
    "AuthorizeResult",
    "Billing",
    "CreatedApiKey",
    "KeyInfo",
    "PriceSource",
]

log = logging.getLogger(__name__)

DEFAULT_LEDGER_LIMIT = 100
MAX_LEDGER_LIMIT = 1000
SWEEP_BATCH = 200
#: A request's ``models`` list is short in practice (OpenRouter allows a handful); bounded so one Authorize
#: cannot be made to price thousands of names.
MAX_FALLBACK_MODELS = 16
_KEY_CACHE_MAX = 100_000

#: Captures above their hold (the estimate behind the hold was low): charged in full, so the wallet may go below
#: zero; Authorize then refuses the account until it is topped up. Alert on a rising rate.
CAPTURE_OVERRUNS = Counter("tollgate_billing_capture_overruns_total", "Usage captures above the hold they close")
CAPTURE_OVERRUN_NANOS = Counter("tollgate_billing_capture_overrun_nanos_total",
                                "Nanos captured beyond the holds they close (all currencies)")
#: Holds past their TTL left open because usage is lagging (see usage_lag.py); each later closes by its usage, or
#: is captured in full once usage caught up or the maximum extension ran out.
HOLDS_EXTENDED = Gauge("tollgate_billing_holds_extended",
                       "Open holds past their TTL kept open at the last sweep because usage is lagging")


class PriceSource(Protocol):
    """Where holds get their prices: billing's cached copy of metering's price book (None until first load)."""

    def current(self) -> PriceBook | None: ...


@dataclass(frozen=True, slots=True)
class AuthorizeResult:
    account_id: str
    key_id: str
    hold_id: str
    hold_amount_nanos: int
    currency: str
    team: str
    project: str
    #: True when the hold already existed (a retried Authorize for the same request id).
    replayed: bool = False
    #: The candidate model the hold was sized for (the most expensive) and the output cap it used.
    hold_model: str = ""
    hold_output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    key_id: str
    #: The plaintext: returned exactly once, never stored.
    api_key: str
    prefix: str


@dataclass(frozen=True, slots=True)
class AddCreditsResult:
    transaction_id: str
    balance_nanos: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key: KeyRow
    wallet: WalletRow
    #: The key's tightest limit now (its own limit or a budget of its chain), None when nothing limits it.
    tightest: TightestLimit | None = None

    @property
    def balance_nanos(self) -> int:
        """What the account can still spend: balance less open holds."""
        return self.wallet.available_nanos

    @property
    def limit_remaining_nanos(self) -> int:
        grant = self.key.grant
        return max(0, grant.limit_nanos - self.key.usage_nanos - self.key.held_nanos) if grant.has_limit else 0


class _KeyCache:
    """key hash → grant for a few seconds: Authorize then needs no read before its one write transaction.

    Only the static part of a key is cached (ids, allow-list, limit settings); balances and usage are always read
    inside the guarded UPDATE. Unknown keys are not cached, so a new key works at once.
    """

    def __init__(self, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl_seconds
        self.clock = clock
        self._entries: dict[str, tuple[float, ApiKeyGrant]] = {}

    def get(self, key_hash: str) -> ApiKeyGrant | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key_hash]
            return None
        return entry[1]

    def put(self, key_hash: str, grant: ApiKeyGrant) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= _KEY_CACHE_MAX:
            self._entries.clear()
        self._entries[key_hash] = (self.clock() + self.ttl, grant)

    def evict(self, *key_hashes: str) -> None:
        """Forget these secrets at once (a key revoked or rotated through this process)."""
        for key_hash in key_hashes:
            self._entries.pop(key_hash, None)


class Billing:
    """The billing application service. One per process; transports (gRPC, the consumer) call into it."""

    def __init__(
        self,
        engine: AsyncEngine,
        prices: PriceSource,
        *,
        hold_ttl_seconds: int = 600,
        key_cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_commit: Callable[[], None] | None = None,
        usage_lag: UsageLag | None = None,
        hold_max_extension_seconds: int = 3600,
        unknown_usage_charge: domain.UnknownUsageCharge = domain.UnknownUsageCharge.PROMPT,
    ) -> None:
        self.engine = engine
        self.prices = prices
        self.hold_ttl_seconds = hold_ttl_seconds
        #: Whether rated usage is behind (None: no consumer, e.g. in-process tests: holds expire at their TTL).
        self.usage_lag = usage_lag
        #: How long past its TTL a hold may be kept open while usage lags; then it is captured in full anyway.
        self.hold_max_extension_seconds = hold_max_extension_seconds
        #: What a request whose usage is unknown (UsageRated.usage_unknown) is charged: none, prompt or hold.
        self.unknown_usage_charge = unknown_usage_charge
        self.clock = clock
        self.monotonic = monotonic
        #: Called after a transaction that wrote events commits (the outbox relay's ``notify``).
        self.on_commit = on_commit
        self.keys = _KeyCache(key_cache_seconds, monotonic)
        self._sqlite_writes = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        #: Authorize's writes: concurrent holds group-committed, one transaction for many callers.
        self.holds = HoldWriter(engine, self.sqlite_turn)

    @asynccontextmanager
    async def sqlite_turn(self) -> AsyncIterator[None]:
        """Wait for this process's turn to write on SQLite (a no-op elsewhere); the consumer takes it for its
        batch transactions so they queue with Authorize instead of colliding in SQLite's busy handler."""
        if self._sqlite_writes is None:
            yield
            return
        async with self._sqlite_writes:
            yield

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. On SQLite (one writer at a time) this process's writers queue on a lock instead of
        colliding in ``BEGIN IMMEDIATE``, whose busy handler sleeps for up to 100 ms a try."""
        if self._sqlite_writes is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._sqlite_writes, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A read. On SQLite it is marked read-only (a deferred ``BEGIN``: a WAL snapshot, no write lock), so it
        neither waits for this process's writers nor makes them wait: GetKeyInfo and key look-ups stay off the
        write queue."""
        async with self.engine.connect() as conn:
            if self._sqlite_writes is not None:
                await conn.execution_options(**READ_ONLY)
            yield conn

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()

    # --- the hot path -------------------------------------------------------------------------------------------

    async def _grant(self, api_key: str) -> ApiKeyGrant:
        if not api_key:
            raise InvalidApiKey("an API key is required")
        key_hash = domain.hash_api_key(api_key)
        grant = self.keys.get(key_hash)
        if grant is None:
            async with self._read() as conn:
                row = await repository.find_key(conn, key_hash=key_hash)
            if row is None:
                raise InvalidApiKey("invalid API key")
            grant = row.grant
            self.keys.put(key_hash, grant)
        grant.check_usable(self._now_ms())  # revoked, expired or past its rotation grace: 401, even from the cache
        return grant

    async def authorize(
        self,
        api_key: str,
        request_id: str,
        model: str,
        prompt_tokens: int,
        max_output_tokens: int,
        fallback_models: Sequence[str] = (),
    ) -> AuthorizeResult:
        """Resolve the key and place a hold for the request's maximum cost, atomically (one transaction).

        ``fallback_models`` are the other models the request may be served by: each must pass the key's
        allow-list and have a price, and the hold covers the most expensive candidate."""
        grant = await self._grant(api_key)
        if not request_id:
            raise InvalidArgument("request_id is required")
        if not model or any(not m for m in fallback_models):
            raise InvalidArgument("model is required")
        if len(fallback_models) > MAX_FALLBACK_MODELS:
            raise InvalidArgument(f"at most {MAX_FALLBACK_MODELS} fallback models")
        book = self.prices.current()
        if book is None:
            grant.check_model(model)
            raise PriceBookUnavailable("the price book has not been loaded from metering yet")
        candidate = domain.hold_for_candidates(grant, book, (model, *fallback_models), prompt_tokens,
                                               max_output_tokens)
        if book.currency != grant.currency:
            raise CurrencyMismatch(f"prices are in {book.currency}, the account in {grant.currency}")
        amount = candidate.amount_nanos
        event = domain.hold_placed(grant, request_id, candidate.model, amount, self._now_ms(), self.hold_ttl_seconds)
        existing = await self.holds.place(PendingHold.of(event))
        if existing is not None:
            return self._replayed_hold(grant, existing)
        self._committed()
        return AuthorizeResult(
            account_id=grant.account_id,
            key_id=grant.key_id,
            hold_id=request_id,
            hold_amount_nanos=amount,
            currency=grant.currency,
            team=grant.team,
            project=grant.project,
            hold_model=candidate.model,
            hold_output_tokens=candidate.output_tokens,
        )

    def _replayed_hold(self, grant: ApiKeyGrant, hold: domain.HoldView) -> AuthorizeResult:
        """A retried Authorize: the hold for this request id already exists (or a concurrent twin just made it)."""
        if hold.key_id != grant.key_id:
            raise RequestIdConflict("request_id already names another key's request")
        return AuthorizeResult(
            account_id=hold.account_id,
            key_id=hold.key_id,
            hold_id=hold.hold_id,
            hold_amount_nanos=hold.amount_nanos,
            currency=grant.currency,
            team=grant.team,
            project=grant.project,
            replayed=True,
        )

    async def get_key_info(self, api_key: str) -> KeyInfo:
        if not api_key:
            raise InvalidApiKey("an API key is required")
        async with self._read() as conn:
            key = await repository.find_key(conn, key_hash=domain.hash_api_key(api_key))
            if key is None:
                raise InvalidApiKey("invalid API key")
            now = self._now_ms()
            key.grant.check_usable(now)
            wallet = await repository.get_wallet(conn, key.grant.account_id)
            grant = key.grant
            chain = [b for b in await repository.budget_records(conn, grant.account_id)
                     if in_chain(b.scope, b.scope_id, account_id=grant.account_id, key_id=grant.key_id,
                                 team=grant.team, project=grant.project)]
        if wallet is None:
            raise AccountNotFound(f"account {key.grant.account_id} has no wallet")
        info = KeyInfo(key=key, wallet=wallet)
        own = (grant.limit_nanos, info.limit_remaining_nanos) if grant.has_limit else None
        return replace(info, tightest=tightest_limit(grant.key_id, own, chain, now))

    # --- admin --------------------------------------------------------------------------------------------------

    async def create_account(self, name: str, currency: str = "", account_id: str = "",
                             time_zone: str = "") -> tuple[AccountRow, bool]:
        """Create an account and its wallet. With a client-chosen id the call is idempotent: (account, created).
        ``time_zone`` (IANA, default UTC) is where its budgets' days, weeks and months turn over."""
        event = domain.account_created(account_id or new_id("acct"), name, currency or "USD", self._now_ms(),
                                       time_zone)
        existing: AccountRow | None = None
        try:
            async with self._write() as conn:
                existing = await repository.get_account(conn, event.account_id)
                if existing is None:
                    await repository.record(conn, event)
        except IntegrityError:
            existing = await self._account(event.account_id)
        if existing is not None:
            return existing, False
        self._committed()
        return AccountRow(event.account_id, event.name, event.currency, event.created_at_unix_ms,
                          event.time_zone), True

    async def _account(self, account_id: str) -> AccountRow:
        async with self._read() as conn:
            account = await repository.get_account(conn, account_id)
        if account is None:
            raise AccountNotFound(f"account {account_id} not found")
        return account

    async def create_api_key(
        self,
        account_id: str,
        *,
        label: str = "",
        has_limit: bool = False,
        limit_nanos: int = 0,
        allowed_models: Iterable[str] = (),
        team: str = "",
        project: str = "",
        rate_limit_rpm: int = 0,
        account_admin: bool = False,
        expires_at_unix_ms: int = 0,
    ) -> CreatedApiKey:
        plaintext, prefix = domain.new_api_key()
        event = domain.api_key_created(
            key_id=new_id("key"),
            account_id=account_id,
            key_hash=domain.hash_api_key(plaintext),
            prefix=prefix,
            label=label,
            has_limit=has_limit,
            limit_nanos=limit_nanos,
            allowed_models=allowed_models,
            team=team,
            project=project,
            rate_limit_rpm=rate_limit_rpm,
            at_unix_ms=self._now_ms(),
            account_admin=account_admin,
            expires_at_unix_ms=expires_at_unix_ms,
        )
        async with self._write() as conn:
            if await repository.get_account(conn, account_id) is None:
                raise AccountNotFound(f"account {account_id} not found")
            await check_membership(conn, account_id, team=team, project=project)
            await repository.record(conn, event)
        self._committed()
        log.info("api key created", extra={"account_id": account_id, "key_id": event.key_id})
        return CreatedApiKey(key_id=event.key_id, api_key=plaintext, prefix=prefix)

    async def add_credits(
        self, account_id: str, amount_nanos: int, idempotency_key: str = "", description: str = "", *,
        credit_kind: str = "", expires_at_unix_ms: int = 0,
    ) -> AddCreditsResult:
        """Prepay ``amount_nanos``; the same (account, idempotency key) never credits twice. A ``promotional``
        credit expires at ``expires_at_unix_ms`` and is spent before paid credit (credits.py)."""
        transaction_id = new_id("txn")
        event = domain.credits_added(
            account_id, amount_nanos, idempotency_key or transaction_id, transaction_id, description, self._now_ms(),
            credit_kind=credit_kind, expires_at_unix_ms=expires_at_unix_ms,
        )
        try:
            async with self._write() as conn:
                result = await self._add_credits(conn, event)
        except IntegrityError:  # a concurrent twin with the same idempotency key committed first
            async with self._read() as conn:
                result = await self._add_credits(conn, event, replay_only=True)
        if not result.replayed:
            self._committed()
        return result

    async def _add_credits(
        self, conn: AsyncConnection, event: billing_pb2.CreditsAdded, *, replay_only: bool = False
    ) -> AddCreditsResult:
        wallet = await repository.get_wallet(conn, event.account_id, lock=not replay_only)
        if wallet is None:
            raise AccountNotFound(f"account {event.account_id} not found")
        earlier = await repository.find_credit(conn, event.account_id, event.idempotency_key)
        if earlier is not None:
            transaction_id, amount = earlier
            expires = await repository.promo_expiry(conn, transaction_id)
            if expires != (event.expires_at_unix_ms if event.credit_kind == "promotional" else None):
                raise IdempotencyKeyReused(
                    f"idempotency key {event.idempotency_key!r} was used for another kind of credit or expiry: use "
                    "a new key for another credit"
                )
            if amount != event.amount_nanos:
                raise IdempotencyKeyReused(
                    f"idempotency key {event.idempotency_key!r} already credited {amount} nanos, not "
                    f"{event.amount_nanos}: use a new key for another credit"
                )
            return AddCreditsResult(transaction_id=transaction_id, balance_nanos=wallet.balance_nanos, replayed=True)
        if replay_only:
            raise ConcurrentUpdate("credit could not be applied; retry")
        if wallet.balance_nanos + event.amount_nanos > domain.INT64_MAX:
            raise AmountOutOfRange(
                f"the balance would be {wallet.balance_nanos + event.amount_nanos} nanos, beyond the largest "
                f"amount billing stores ({domain.INT64_MAX})"
            )
        await repository.record(conn, event)
        await repository.record_alerts(conn, [event.account_id], event.transaction.created_at_unix_ms)
        return AddCreditsResult(
            transaction_id=event.transaction.transaction_id,
            balance_nanos=wallet.balance_nanos + event.amount_nanos,
            replayed=False,
        )

    async def get_balance(self, account_id: str) -> WalletRow:
        async with self._read() as conn:
            wallet = await repository.get_wallet(conn, account_id)
        if wallet is None:
            raise AccountNotFound(f"account {account_id} not found")
        return wallet

    async def list_ledger_entries(self, account_id: str, limit: int = 0) -> list[LedgerRow]:
        """The newest ``limit`` entries (the first page of :meth:`ledger_page`)."""
        return (await self.ledger_page(account_id, limit))[0]

    async def ledger_page(
        self, account_id: str, limit: int = 0, page_token: str = ""
    ) -> tuple[list[LedgerRow], str]:
        """One page of the account's ledger, newest first, and the token of the next (older) page ("" at the end)."""
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(limit or DEFAULT_LEDGER_LIMIT, MAX_LEDGER_LIMIT)
        before = ledger_cursor(page_token)
        async with self._read() as conn:
            if await repository.get_account(conn, account_id) is None:
                raise AccountNotFound(f"account {account_id} not found")
            rows = await repository.ledger_entries(conn, account_id, limit + 1, before)
        if len(rows) <= limit:
            return rows, ""
        return rows[:limit], ledger_page_token(rows[limit - 1].posting_id)

    # --- usage (the consumer) -----------------------------------------------------------------------------------

    async def settle_usage(self, session: AsyncSession, rated: usage_pb2.UsageRated, usage_event_id: str) -> None:
        """Close the hold of one rated request, inside the caller's transaction."""
        await self.settle_usage_batch(session, [(rated, usage_event_id)])

    async def settle_usage_batch(
        self, session: AsyncSession, items: Sequence[tuple[usage_pb2.UsageRated, str]]
    ) -> int:
        """Close the holds of a batch of rated requests, inside the consumer's transaction (which also stores the
        offsets). The holds are read locked; decisions see the batch's own earlier decisions. Returns the number
        of billing events recorded."""
        holds = await repository.lock_holds(session, (r.hold_id or r.request_id for r, _ in items))
        stored = {hold_id: hold.status.value for hold_id, hold in holds.items()}  # before this batch's decisions
        unknown = {r.account_id for r, _ in items if (r.hold_id or r.request_id) not in holds}
        known_accounts = await repository.existing_accounts(session, unknown) if unknown else set()
        now = self._now_ms()
        events: list[Message] = []
        for rated, usage_event_id in items:
            hold_id = rated.hold_id or rated.request_id
            ids = {"hold_id": hold_id, "account_id": rated.account_id, "key_id": rated.key_id}
            if not hold_id:
                log.error("usage event without a request id; skipped", extra={"event_id": usage_event_id})
                continue
            hold = holds.get(hold_id)
            if hold is None:
                if rated.account_id not in known_accounts:
                    log.error("usage for an unknown account and no hold; nothing to charge", extra=ids)
                    continue
                log.warning("usage without a hold; charging it without one", extra=ids)
                captured = domain.unheld_capture(hold_id, rated.account_id, rated.key_id, rated, usage_event_id, now,
                                                 self.unknown_usage_charge)
                holds[hold_id] = domain.HoldView(hold_id, rated.account_id, rated.key_id, 0,
                                                 domain.HoldStatus.CAPTURED, captured.captured_nanos, now)
                events.append(captured)
                continue
            event = domain.settle_usage(hold, rated, usage_event_id, now, self.unknown_usage_charge)
            if event is None:
                log.warning("another usage event for a closed hold; ignored",
                            extra={**ids, "status": hold.status.value})
                continue
            if rated.usage_unknown:
                log.info("usage unknown (a provider may bill it): charged per BILLING_UNKNOWN_USAGE_CHARGE",
                         extra={**ids, "mode": self.unknown_usage_charge.value,
                                "rated_nanos": rated.resale_price_nanos, "hold_nanos": hold.amount_nanos})
            if isinstance(event, billing_pb2.HoldCaptured):
                if event.captured_nanos > hold.amount_nanos:
                    overrun = event.captured_nanos - hold.amount_nanos
                    CAPTURE_OVERRUNS.inc()
                    CAPTURE_OVERRUN_NANOS.inc(overrun)
                    log.warning("rated price above the hold; charging the rated price",
                                extra={**ids, "hold_nanos": hold.amount_nanos, "rated_nanos": event.captured_nanos,
                                       "overrun_nanos": overrun})
                holds[hold_id] = replace(hold, status=domain.HoldStatus.CAPTURED, captured_nanos=event.captured_nanos)
            else:
                holds[hold_id] = replace(hold, status=domain.HoldStatus.RECONCILED)
            events.append(event)
        await repository.record_many(session, events, hold_statuses=stored)
        alerts = await repository.record_alerts(session, {repository.event_account(e) for e in events}, now)
        return len(events) + alerts

    # --- holds past their TTL (the sweeper) ---------------------------------------------------------------------

    async def expire_due_holds(self, now_unix_ms: int | None = None) -> int:
        """Capture in full every open hold past its TTL (HoldExpired, flagged for reconciliation) whose usage is
        presumed lost: usage has caught up past the hold's deadline, or the maximum extension has run out. The
        others stay open (extended): their usage is late, not lost, and will capture them at the rated price."""
        now = self._now_ms() if now_unix_ms is None else now_unix_ms
        cutoff = await self._expiry_cutoff(now)
        expired = 0
        while True:
            async with self._read() as conn:
                due = await repository.due_holds(conn, cutoff, SWEEP_BATCH)
            for hold in due:
                event = domain.hold_expired(hold, now)
                if event is None:
                    continue
                try:
                    async with self._write() as conn:
                        await repository.record(conn, event)
                        await repository.record_alerts(conn, [hold.account_id], now)
                except ConcurrentUpdate:
                    continue  # its usage arrived first
                expired += 1
                log.warning("hold expired without usage; captured in full, flagged for reconciliation",
                            extra={"hold_id": hold.hold_id, "account_id": hold.account_id,
                                   "amount_nanos": hold.amount_nanos})
            if expired:
                self._committed()
            if len(due) < SWEEP_BATCH:
                return expired

    async def _expiry_cutoff(self, now: int) -> int:
        """The deadline at or before which open holds expire now (``now`` unless usage lags); counts the rest."""
        if self.usage_lag is None:
            return now
        floor = now - self.hold_max_extension_seconds * 1000
        cutoff = max(floor, await self.usage_lag.expiry_cutoff(now))
        extended = 0
        if cutoff < now:
            async with self._read() as conn:
                extended = await repository.count_open_holds(conn, after_unix_ms=cutoff, until_unix_ms=now)
            if extended:
                log.warning("usage is lagging: holds past their TTL kept open",
                            extra={"holds": extended, "unapplied_usage": self.usage_lag.unapplied,
                                   "usage_watermark_unix_ms": self.usage_lag.watermark_unix_ms})
        HOLDS_EXTENDED.set(extended)
        return cutoff
