"""The webhook delivery worker, in billing's process: queue the alert events, send what is due, log every attempt.

Each step (every ``BILLING_WEBHOOK_POLL_SECONDS``):

1. **Queue** (webhook_queue.py): read billing's outbox past the stored cursor, one delivery row per alert event an
   account's webhook wants, in the cursor's transaction; a batch per transaction until caught up.
2. **Claim** up to ``concurrency`` due deliveries (pending, retry time reached, not claimed): the claim is a time
   (now + twice the timeout), so a worker killed mid-send (kill -9) leaves a claim that runs out and the delivery is
   sent again — at-least-once; the receiver dedupes on the event ``id`` (also in ``Tollgate-Event-Id``).
3. **Send** them concurrently, outside any transaction: POST the stored JSON body, signed now
   (webhook_rules.signature_header), one ``timeout_seconds`` for the whole attempt, no redirects, the connection
   made only to addresses webhook_rules allows (names resolved through :class:`CheckedResolver`). A slow receiver
   costs one worker slot for at most the timeout; billing's requests never wait for it.
4. **Record** each attempt (``webhook_attempts``) and the delivery's new state: ``delivered`` on a 2xx, else the
   next retry time (webhook_rules.RetryPolicy) or ``failed`` once the attempts or the age are spent.

All state is in billing's database, so a restart (or a kill) resumes where the rows say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from sqlalchemy import insert, select, update

from .application import Billing
from .tables import webhook_attempts, webhook_deliveries, webhook_secrets, webhooks
from .webhook_config import WebhookSettings
from .webhook_queue import WebhookQueue
from .webhook_rules import IpNetwork, address_allowed, ip_literal, signature_header

__all__ = ["AddressRefused", "CheckedResolver", "WebhookWorker"]

log = logging.getLogger(__name__)

USER_AGENT = "Tollgate-Webhooks/1"


class AddressRefused(OSError):
    """The webhook's host is (or resolves only to) an address billing may not call."""


class CheckedResolver(AbstractResolver):
    """Resolves a name and keeps only the addresses billing may connect to: the connection is made to a checked
    address, so DNS that answers differently later (rebinding) cannot reach the internal plane."""

    def __init__(self, allowed: Sequence[IpNetwork]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allowed = tuple(allowed)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if address_allowed(r["host"], self._allowed)]
        if not kept:
            raise AddressRefused(f"{host} resolves only to loopback, private or reserved addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class _Due:
    delivery_id: int
    account_id: str
    event_id: str
    event_type: str
    body: str
    attempts: int
    created_at_unix_ms: int
    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    status_code: int
    error: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


class WebhookWorker:
    def __init__(self, billing: Billing, settings: WebhookSettings, *, clock: Callable[[], float] | None = None,
                 rand: random.Random | None = None) -> None:
        self.billing = billing
        self.settings = settings
        self.clock = clock or billing.clock
        self.rand = rand or random.Random()
        self.queue = WebhookQueue(gap_grace_seconds=settings.gap_grace_seconds,
                                  sqlite=billing.engine.dialect.name == "sqlite")
        self._session: aiohttp.ClientSession | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("webhook step failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_seconds)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def step(self) -> int:
        """Queue new alerts, then send what is due; returns how many attempts were made."""
        more = True
        while more:  # a batch per transaction, until caught up: the log can grow faster than a batch per poll
            async with self.billing._write() as conn:
                more = (await self.queue.run_pass(conn, self._now_ms())).more
        due = await self._claim()
        if not due:
            return 0
        outcomes = await asyncio.gather(*(self._send(d) for d in due))
        await self._record(list(zip(due, outcomes, strict=True)))
        return len(due)

    # --- claim ----------------------------------------------------------------------------------------------------

    async def _claim(self) -> list[_Due]:
        now = self._now_ms()
        d, w, s = webhook_deliveries.c, webhooks.c, webhook_secrets.c
        claim_until = now + int(self.settings.timeout_seconds * 2000) + 5000
        async with self.billing._write() as conn:
            rows = (await conn.execute(
                select(d.delivery_id, d.account_id, d.event_id, d.event_type, d.body, d.attempts,
                       d.created_at_unix_ms, w.url, w.deleted_at_unix_ms, s.secret)
                .select_from(webhook_deliveries.outerjoin(webhooks, w.account_id == d.account_id)
                             .outerjoin(webhook_secrets, s.account_id == d.account_id))
                .where(d.status == "pending", d.next_attempt_at_unix_ms <= now, d.claimed_until_unix_ms <= now)
                .order_by(d.next_attempt_at_unix_ms, d.delivery_id)
                .limit(self.settings.concurrency)
            )).all()
            due: list[_Due] = []
            for row in rows:
                if row.url is None or row.deleted_at_unix_ms is not None or row.secret is None:
                    # No webhook (deleted) or no secret (a database rebuilt from the log): nothing to sign with.
                    gone = row.url is None or row.deleted_at_unix_ms is not None
                    reason = "webhook deleted" if gone else "no signing secret: rotate the webhook's secret"
                    await conn.execute(update(webhook_deliveries).where(d.delivery_id == row.delivery_id)
                                       .values(status="failed", last_error=reason, next_attempt_at_unix_ms=0))
                    continue
                claimed = await conn.execute(
                    update(webhook_deliveries)
                    .where(d.delivery_id == row.delivery_id, d.claimed_until_unix_ms <= now, d.status == "pending")
                    .values(claimed_until_unix_ms=claim_until))
                if claimed.rowcount == 1:
                    due.append(_Due(row.delivery_id, row.account_id, row.event_id, row.event_type, row.body,
                                    row.attempts, row.created_at_unix_ms, row.url, row.secret))
        return due

    # --- send -----------------------------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.settings.allowed_networks),
                                             limit=self.settings.concurrency, use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                headers={"User-Agent": USER_AGENT}, trust_env=False)
        return self._session

    async def _send(self, due: _Due) -> _Outcome:
        started = time.perf_counter()
        host = urlsplit(due.url).hostname or ""
        if ip_literal(host) is not None and not address_allowed(host, self.settings.allowed_networks):
            return _Outcome(0, "address refused: loopback, private or reserved", 0)
        body = due.body.encode()
        headers = {
            "Content-Type": "application/json",
            "Tollgate-Signature": signature_header(due.secret, int(self.clock()), body),
            "Tollgate-Event-Id": due.event_id,
            "Tollgate-Event-Type": due.event_type,
            "Tollgate-Delivery-Attempt": str(due.attempts + 1),
        }
        try:
            async with self._client().post(due.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except TimeoutError:
            status, error = 0, f"timeout after {self.settings.timeout_seconds:g} s"
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, AddressRefused)
            status, error = 0, "address refused: loopback, private or reserved" if refused else "connection failed"
        except aiohttp.ClientError as exc:
            status, error = 0, f"request failed ({type(exc).__name__})"
        elapsed = int((time.perf_counter() - started) * 1000)
        return _Outcome(status, error, elapsed)

    # --- record ---------------------------------------------------------------------------------------------------

    async def _record(self, results: list[tuple[_Due, _Outcome]]) -> None:
        now = self._now_ms()
        retry = self.settings.retry
        d = webhook_deliveries.c
        async with self.billing._write() as conn:
            for due, outcome in results:
                attempt = due.attempts + 1
                await conn.execute(insert(webhook_attempts).values(
                    delivery_id=due.delivery_id, attempt=attempt, at_unix_ms=now, status_code=outcome.status_code,
                    error=outcome.error[:500], duration_ms=outcome.duration_ms))
                values: dict[str, Any] = {"attempts": attempt, "last_status_code": outcome.status_code,
                                          "last_error": outcome.error[:500], "claimed_until_unix_ms": 0}
                if outcome.ok:
                    values.update(status="delivered", delivered_at_unix_ms=now, next_attempt_at_unix_ms=0)
                else:
                    delay = retry.next_delay(attempt, self.rand)
                    age = (now - due.created_at_unix_ms) / 1000
                    if retry.gives_up(attempt, age, delay):
                        values.update(status="failed", next_attempt_at_unix_ms=0)
                    else:
                        values.update(next_attempt_at_unix_ms=now + int(delay * 1000))
                await conn.execute(update(webhook_deliveries)
                                   .where(d.delivery_id == due.delivery_id, d.status == "pending").values(**values))
        for due, outcome in results:
            log.info("webhook attempt", extra={"account_id": due.account_id, "event_id": due.event_id,
                                               "attempt": due.attempts + 1, "status_code": outcome.status_code,
                                               "error": outcome.error, "duration_ms": outcome.duration_ms})
