"""The webhook queue: billing's own log (the outbox, kept after publishing) read in order → one delivery per alert.

A cursor row (``webhook_cursor``, in billing's database) says how far the outbox has been read. One pass, in one
write transaction: lock the cursor, read the next outbox ids, turn each alert event of an account whose webhook
wants it into a ``webhook_deliveries`` row (its JSON body fixed once, so every retry sends the same bytes), move the
cursor. The deliveries and the cursor commit together, so a crash anywhere repeats a pass or none: no alert is
queued twice or skipped (the unique (account, event id) index would refuse a second one anyway).

Ids commit out of order on PostgreSQL (a transaction holding id 7 may commit after the one holding 8), so the pass
stops at a gap and waits for it for ``gap_grace_seconds`` before passing it (a rolled-back transaction leaves a gap
forever). SQLite has one writer at a time: a gap there is permanent and passed at once.

Only alerts newer than the webhook are delivered to it (a webhook set today does not receive last month's
BalanceLow).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import insert, select, update
from tollgate.events.v1 import billing_pb2
from tollgate_common.money import amounts

from .budgets import period_name, scope_name
from .projections import Executor
from .tables import messaging, webhook_cursor, webhook_deliveries, webhooks
from .webhook_rules import EVENT_TYPES

__all__ = ["CURSOR", "QueuePass", "WebhookQueue", "event_body"]

CURSOR = "alerts"
_BATCH = 1000
#: Event id prefix (repository._EVENT_IDS) → short type; the prefix decides without decoding the row.
_PREFIXES = {f"{short}:": short for short in EVENT_TYPES}
_MESSAGES: dict[str, type[Message]] = {
    "budget.threshold_crossed": billing_pb2.BudgetThresholdCrossed,
    "balance.low": billing_pb2.BalanceLow,
    "balance.restored": billing_pb2.BalanceRestored,
}


def _data(short: str, event: Any) -> tuple[dict[str, Any], int]:
    """The event as the receiver sees it (the admin API's names and amounts) and when it happened (unix ms)."""
    if short == "budget.threshold_crossed":
        return {
            "budget_id": event.budget_id, "scope": scope_name(event.scope), "scope_id": event.scope_id,
            "period": period_name(event.period), "period_start": event.period_start_unix_ms // 1000,
            "threshold_percent": event.threshold_percent, **amounts(limit=event.limit_nanos, spent=event.spent_nanos),
        }, event.crossed_at_unix_ms
    if short == "balance.low":
        return {"currency": event.currency, **amounts(threshold=event.threshold_nanos,
                                                       balance=event.balance_nanos)}, event.crossed_at_unix_ms
    return {**amounts(threshold=event.threshold_nanos, balance=event.balance_nanos)}, event.restored_at_unix_ms


def event_body(event_id: str, short: str, account_id: str, event: Message) -> tuple[str, int]:
    """The JSON body of a delivery (Stripe's event shape: id to dedupe on, type, created, data) and its time."""
    data, at_ms = _data(short, event)
    body = {"id": event_id, "object": "event", "type": short, "created": at_ms // 1000, "account_id": account_id,
            "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=False), at_ms


@dataclass(frozen=True, slots=True)
class QueuePass:
    read: int
    queued: int
    cursor: int
    #: The pass read a whole batch without stopping at a gap: more rows may be waiting right now.
    more: bool = False


class WebhookQueue:
    def __init__(self, *, gap_grace_seconds: float, sqlite: bool,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.gap_grace_seconds = 0.0 if sqlite else gap_grace_seconds
        self.monotonic = monotonic
        #: The first missing id the pass stopped at, and since when (in memory: a restart just waits again).
        self._gap: tuple[int, float] | None = None

    async def run_pass(self, conn: Executor, now_ms: int) -> QueuePass:
        """One pass inside the caller's write transaction."""
        cursor = (await conn.execute(
            select(webhook_cursor.c.last_outbox_id).where(webhook_cursor.c.name == CURSOR).with_for_update()
        )).scalar_one_or_none()
        if cursor is None:
            cursor = 0
            await conn.execute(insert(webhook_cursor).values(name=CURSOR, last_outbox_id=0))
        out = messaging.outbox.c
        rows = (await conn.execute(
            select(out.id, out.event_id, out.key).where(out.id > cursor).order_by(out.id).limit(_BATCH)
        )).all()
        alerts: list[tuple[int, str, str, str]] = []  # outbox id, event id, account, short type
        last = cursor
        for row in rows:
            if row.id != last + 1 and not self._gap_passed(last + 1):
                break
            last = row.id
            prefix = row.event_id.split(":", 1)[0] + ":"
            short = _PREFIXES.get(prefix)
            if short is not None:
                alerts.append((row.id, row.event_id, row.key, short))
        queued = await self._queue(conn, alerts, now_ms) if alerts else 0
        if last != cursor:
            await conn.execute(update(webhook_cursor).where(webhook_cursor.c.name == CURSOR)
                               .values(last_outbox_id=last))
        more = len(rows) == _BATCH and last == rows[-1].id
        return QueuePass(read=last - cursor if rows else 0, queued=queued, cursor=last, more=more)

    def _gap_passed(self, missing: int) -> bool:
        now = self.monotonic()
        if self._gap is None or self._gap[0] != missing:
            self._gap = (missing, now)
        return now - self._gap[1] >= self.gap_grace_seconds

    async def _queue(self, conn: Executor, alerts: list[tuple[int, str, str, str]], now_ms: int) -> int:
        accounts = sorted({a[2] for a in alerts})
        w = webhooks.c
        hooks = {row.account_id: row for row in await conn.execute(
            select(w.account_id, w.events, w.created_at_unix_ms)
            .where(w.account_id.in_(accounts), w.deleted_at_unix_ms.is_(None)))}
        wanted = [a for a in alerts if a[2] in hooks and a[3] in hooks[a[2]].events.split(",")]
        if not wanted:
            return 0
        out = messaging.outbox.c
        values = {row.id: row.value for row in await conn.execute(
            select(out.id, out.value).where(out.id.in_([a[0] for a in wanted])))}
        d = webhook_deliveries.c
        known = {(row.account_id, row.event_id) for row in await conn.execute(
            select(d.account_id, d.event_id).where(d.event_id.in_([a[1] for a in wanted])))}
        rows = []
        for outbox_id, event_id, account_id, short in wanted:
            if (account_id, event_id) in known:
                continue
            event = _MESSAGES[short]()
            event.ParseFromString(values[outbox_id])
            body, at_ms = event_body(event_id, short, account_id, event)
            if at_ms < hooks[account_id].created_at_unix_ms:
                continue
            rows.append({"account_id": account_id, "event_id": event_id, "event_type": short, "body": body,
                         "status": "pending", "attempts": 0, "next_attempt_at_unix_ms": now_ms,
                         "claimed_until_unix_ms": 0, "last_status_code": 0, "last_error": "",
                         "created_at_unix_ms": at_ms, "delivered_at_unix_ms": None})
            known.add((account_id, event_id))
        if rows:
            await conn.execute(insert(webhook_deliveries), rows)
        return len(rows)
