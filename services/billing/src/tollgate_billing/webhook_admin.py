"""An account's alert webhook over the admin API: set, get, delete, rotate its secret, read its delivery log.

Same shape as alert_admin.py: read, decide, ``repository.record`` in one write transaction. The settings are events
(WebhookSet, WebhookSecretRotated, WebhookDeleted) and so rebuilt from the log; the secret is not: it is generated
here, stored in ``webhook_secrets`` in the same transaction, and returned once, in the reply of the call that made
it. Deleting a webhook ends its pending deliveries (``failed``, "webhook deleted"); their log stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from tollgate.events.v1 import billing_pb2

from . import repository
from .application import Billing
from .errors import AccountNotFound, InvalidArgument, NotFound
from .projections import Executor
from .tables import accounts, webhook_attempts, webhook_deliveries, webhook_secrets, webhooks
from .webhook_rules import IpNetwork, new_secret, parse_events, url_problem

__all__ = ["DeliveryRecord", "WebhookAdmin", "WebhookNotFound", "WebhookRecord"]

MAX_PAGE = 100


class WebhookNotFound(NotFound):
    reason = "webhook_not_found"


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    account_id: str
    url: str
    events: list[str]
    revision: int
    secret_version: int
    created_at_unix_ms: int
    updated_at_unix_ms: int


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempt: int
    at_unix_ms: int
    status_code: int
    error: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    delivery_id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int
    last_error: str
    next_attempt_at_unix_ms: int
    created_at_unix_ms: int
    delivered_at_unix_ms: int | None
    attempt_log: list[AttemptRecord]


class WebhookAdmin:
    def __init__(self, billing: Billing, allowed_networks: Sequence[IpNetwork] = ()) -> None:
        self.billing = billing
        self.allowed_networks = tuple(allowed_networks)

    async def get_webhook(self, account_id: str) -> WebhookRecord:
        async with self.billing._read() as conn:
            found = await _webhook(conn, account_id)
        if found is None or found[1]:
            raise WebhookNotFound(f"account {account_id} has no webhook")
        return found[0]

    async def set_webhook(self, account_id: str, url: str, events: Sequence[str]) -> tuple[WebhookRecord, str]:
        """Create (returns the new secret) or change (returns "") the account's webhook."""
        problem = url_problem(url, self.allowed_networks)
        if problem is not None:
            raise InvalidArgument(problem)
        try:
            wanted = parse_events(list(events))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        now = self.billing._now_ms()
        secret = ""
        async with self.billing._write() as conn:
            await _account_exists(conn, account_id)
            found = await _webhook(conn, account_id, lock=True)
            if found is not None and not found[1]:
                current = found[0]
                if current.url == url and current.events == wanted:
                    return current, ""
                version = current.secret_version
            else:
                version = found[0].secret_version + 1 if found is not None else 1
                secret = new_secret()
                await _store_secret(conn, account_id, version, secret, now)
            revision = found[0].revision + 1 if found is not None else 1
            await repository.record(conn, billing_pb2.WebhookSet(
                account_id=account_id, revision=revision, url=url, events=wanted, secret_version=version,
                set_at_unix_ms=now))
            updated = await _webhook(conn, account_id)
        self.billing._committed()
        assert updated is not None
        return updated[0], secret

    async def rotate_secret(self, account_id: str) -> tuple[WebhookRecord, str]:
        now = self.billing._now_ms()
        secret = new_secret()
        async with self.billing._write() as conn:
            current = await self._live(conn, account_id)
            version = current.secret_version + 1
            await _store_secret(conn, account_id, version, secret, now)
            await repository.record(conn, billing_pb2.WebhookSecretRotated(
                account_id=account_id, revision=current.revision + 1, secret_version=version,
                rotated_at_unix_ms=now))
            updated = await _webhook(conn, account_id)
        self.billing._committed()
        assert updated is not None
        return updated[0], secret

    async def delete_webhook(self, account_id: str) -> WebhookRecord:
        """Returns the webhook as it was."""
        now = self.billing._now_ms()
        async with self.billing._write() as conn:
            current = await self._live(conn, account_id)
            await repository.record(conn, billing_pb2.WebhookDeleted(
                account_id=account_id, revision=current.revision + 1, deleted_at_unix_ms=now))
            await conn.execute(delete(webhook_secrets).where(webhook_secrets.c.account_id == account_id))
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.account_id == account_id, webhook_deliveries.c.status == "pending")
                .values(status="failed", last_error="webhook deleted", next_attempt_at_unix_ms=0))
        self.billing._committed()
        return current

    async def list_deliveries(self, account_id: str, limit: int = 0,
                              page_token: str = "") -> tuple[list[DeliveryRecord], str]:
        """Newest first; the token is the last delivery id of the page."""
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}")
        limit = limit or 20
        before: int | None = None
        if page_token:
            if not page_token.isdigit() or len(page_token) > 18:
                raise InvalidArgument("page_token is not one this API returned")
            before = int(page_token)
        d = webhook_deliveries.c
        query = select(webhook_deliveries).where(d.account_id == account_id)
        if before is not None:
            query = query.where(d.delivery_id < before)
        async with self.billing._read() as conn:
            await _account_exists(conn, account_id)
            rows = (await conn.execute(query.order_by(d.delivery_id.desc()).limit(limit + 1))).all()
            page = rows[:limit]
            attempts: dict[int, list[AttemptRecord]] = {row.delivery_id: [] for row in page}
            if attempts:
                a = webhook_attempts.c
                for att in await conn.execute(select(webhook_attempts).where(a.delivery_id.in_(list(attempts)))
                                              .order_by(a.delivery_id, a.attempt)):
                    attempts[att.delivery_id].append(AttemptRecord(att.attempt, att.at_unix_ms, att.status_code,
                                                                   att.error, att.duration_ms))
        records = [
            DeliveryRecord(row.delivery_id, row.event_id, row.event_type, row.status, row.attempts,
                           row.last_status_code, row.last_error,
                           row.next_attempt_at_unix_ms if row.status == "pending" else 0, row.created_at_unix_ms,
                           row.delivered_at_unix_ms, attempts[row.delivery_id])
            for row in page
        ]
        return records, str(page[-1].delivery_id) if len(rows) > limit else ""

    async def _live(self, conn: Executor, account_id: str) -> WebhookRecord:
        await _account_exists(conn, account_id)
        found = await _webhook(conn, account_id, lock=True)
        if found is None or found[1]:
            raise WebhookNotFound(f"account {account_id} has no webhook")
        return found[0]


async def _account_exists(conn: Executor, account_id: str) -> None:
    if (await conn.execute(select(accounts.c.account_id).where(accounts.c.account_id == account_id))).first() is None:
        raise AccountNotFound(f"account {account_id} not found")


async def _webhook(conn: Executor, account_id: str, *, lock: bool = False) -> tuple[WebhookRecord, bool] | None:
    """The stored row and whether it is deleted; None when the account never had one."""
    query = select(webhooks).where(webhooks.c.account_id == account_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        return None
    record = WebhookRecord(row.account_id, row.url, [e for e in row.events.split(",") if e], row.revision,
                           row.secret_version, row.created_at_unix_ms, row.updated_at_unix_ms)
    return record, row.deleted_at_unix_ms is not None


async def _store_secret(conn: Executor, account_id: str, version: int, secret: str, now: int) -> None:
    await conn.execute(delete(webhook_secrets).where(webhook_secrets.c.account_id == account_id))
    await conn.execute(insert(webhook_secrets).values(account_id=account_id, secret_version=version, secret=secret,
                                                      created_at_unix_ms=now))
