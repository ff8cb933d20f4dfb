"""Webhook events: how WebhookSet / WebhookSecretRotated / WebhookDeleted change the ``webhooks`` table.

Applied one by one in log order (a handful per account, ever), live and in a rebuild alike. Live (``strict``) each
event must follow the row's revision (concurrent admin writes conflict instead of interleaving). The row of a
deleted webhook stays, emptied, so the next WebhookSet continues its revision; that WebhookSet is a new webhook
(``created_at`` restarts: only alerts after it are delivered to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy import insert, select, update
from tollgate.events.v1 import billing_pb2

from .errors import ConcurrentUpdate, InconsistentEvent
from .tables import webhooks

if TYPE_CHECKING:
    from .projections import Executor

__all__ = ["KINDS", "apply"]

KINDS: tuple[type[Message], ...] = (billing_pb2.WebhookSet, billing_pb2.WebhookSecretRotated,
                                    billing_pb2.WebhookDeleted)


async def apply(conn: Executor, events: Sequence[Any], *, strict: bool) -> None:
    for event in events:
        await _apply_one(conn, event, strict=strict)


async def _apply_one(conn: Executor, event: Any, *, strict: bool) -> None:
    row = (await conn.execute(
        select(webhooks.c.revision, webhooks.c.deleted_at_unix_ms).where(webhooks.c.account_id == event.account_id)
    )).first()
    if event.revision != (row.revision + 1 if row is not None else 1):
        message = f"webhook of {event.account_id}: revision {event.revision} does not follow the stored one"
        if strict:
            raise ConcurrentUpdate(message)
        raise InconsistentEvent(message)
    if isinstance(event, billing_pb2.WebhookSet):
        values = {"url": event.url, "events": ",".join(event.events), "revision": event.revision,
                  "secret_version": event.secret_version, "updated_at_unix_ms": event.set_at_unix_ms,
                  "deleted_at_unix_ms": None}
        if row is None:
            await conn.execute(insert(webhooks).values(account_id=event.account_id,
                                                       created_at_unix_ms=event.set_at_unix_ms, **values))
            return
        if row.deleted_at_unix_ms is not None:
            values["created_at_unix_ms"] = event.set_at_unix_ms
        await conn.execute(update(webhooks).where(webhooks.c.account_id == event.account_id).values(**values))
        return
    if row is None or row.deleted_at_unix_ms is not None:
        message = f"{type(event).__name__} for {event.account_id}, which has no webhook"
        if strict:
            raise ConcurrentUpdate(message)
        raise InconsistentEvent(message)
    if isinstance(event, billing_pb2.WebhookSecretRotated):
        values = {"revision": event.revision, "secret_version": event.secret_version,
                  "updated_at_unix_ms": event.rotated_at_unix_ms}
    else:
        values = {"revision": event.revision, "url": "", "events": "", "updated_at_unix_ms": event.deleted_at_unix_ms,
                  "deleted_at_unix_ms": event.deleted_at_unix_ms}
    await conn.execute(update(webhooks).where(webhooks.c.account_id == event.account_id).values(**values))
