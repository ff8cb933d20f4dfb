"""Key lifecycle commands and queries: list, get, update, revoke, rotate (the admin API's keys).

The same shape as :class:`~tollgate_billing.application.Billing`'s commands, on its engine and write queue: read
the key, let :mod:`~tollgate_billing.key_lifecycle` decide the event, ``repository.record`` it (projection + outbox,
one transaction). After a revocation or rotation commits, this process's key cache forgets the secrets at once;
other billing replicas drop their cached copy within ``key_cache_seconds`` (1 s by default), which is what bounds
"the next request with a revoked key is 401" across replicas. Ingress caches no keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from . import domain, repository
from .application import Billing
from .errors import AccountNotFound, ConcurrentUpdate, KeyNotFound
from .key_lifecycle import KeyRecord, api_key_revoked, api_key_rotated, api_key_updated
from .memberships import check_membership

__all__ = ["KeyAdmin", "RotatedKey"]

log = logging.getLogger(__name__)

_Decision = Callable[[KeyRecord], Message | None]


@dataclass(frozen=True, slots=True)
class RotatedKey:
    key: KeyRecord
    #: The new secret: returned exactly once, never stored.
    api_key: str


class KeyAdmin:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    def now_ms(self) -> int:
        return self.billing._now_ms()

    async def list_keys(self, account_id: str, *, include_revoked: bool = False) -> list[KeyRecord]:
        async with self.billing._read() as conn:
            if await repository.get_account(conn, account_id) is None:
                raise AccountNotFound(f"account {account_id} not found")
            return await repository.key_records(conn, account_id, include_revoked=include_revoked)

    async def get_key(self, account_id: str, key_id: str) -> KeyRecord:
        async with self.billing._read() as conn:
            return await self._key(conn, account_id, key_id)

    async def _key(self, conn: repository.Executor, account_id: str, key_id: str) -> KeyRecord:
        key = await repository.key_record(conn, account_id, key_id)
        if key is None:
            if await repository.get_account(conn, account_id) is None:
                raise AccountNotFound(f"account {account_id} not found")
            raise KeyNotFound(f"API key {key_id} not found in account {account_id}")
        return key

    async def _change(
        self, account_id: str, key_id: str, decide: _Decision, *, team: str | None = None, project: str | None = None
    ) -> KeyRecord:
        """Read the key, decide, record: in one write transaction, so the decision sees the row it changes."""
        async with self.billing._write() as conn:
            key = await self._key(conn, account_id, key_id)
            await check_membership(conn, account_id, team=team if team != key.team else None,
                                   project=project if project != key.project else None)
            event = decide(key)
            if event is not None:
                await repository.record(conn, event)
                key = await self._key(conn, account_id, key_id)
        if event is not None:
            self.billing._committed()
            log.info("api key changed", extra={"account_id": account_id, "key_id": key_id,
                                               "change": type(event).__name__})
        return key

    async def update_key(
        self,
        account_id: str,
        key_id: str,
        *,
        label: str | None = None,
        allowed_models: Iterable[str] | None = None,
        expires_at_unix_ms: int | None = None,
        team: str | None = None,
        project: str | None = None,
    ) -> KeyRecord:
        """Change the given settings (None = leave as is). Expiry changes apply from the next request: the grant
        cache re-reads the key within its TTL, and this replica forgets it now."""
        now = self.now_ms()
        models = None if allowed_models is None else list(allowed_models)
        key = await self._change(account_id, key_id, lambda k: api_key_updated(
            k, label=label, allowed_models=models, expires_at_unix_ms=expires_at_unix_ms, team=team,
            project=project, at_unix_ms=now), team=team, project=project)
        self._forget(key)  # a new allow-list or expiry: no stale grant on this replica
        return key

    def _forget(self, *keys: KeyRecord) -> None:
        self.billing.keys.evict(*(h for k in keys for h in (k.key_hash, k.previous_key_hash) if h))

    async def revoke_key(self, account_id: str, key_id: str) -> KeyRecord:
        """Revoke the key (idempotent). Its current secret and any rotated-out one in its grace stop working."""
        now = self.now_ms()
        key = await self._change(account_id, key_id, lambda k: api_key_revoked(k, now))
        self._forget(key)
        return key

    async def rotate_key(self, account_id: str, key_id: str, grace_seconds: int) -> RotatedKey:
        """A new secret for the key; the old one works ``grace_seconds`` more, then answers 401."""
        now = self.now_ms()
        plaintext, prefix = domain.new_api_key()
        new_hash = domain.hash_api_key(plaintext)
        before: list[KeyRecord] = []

        def decide(key: KeyRecord) -> Message:
            before.append(key)
            return api_key_rotated(key, new_hash=new_hash, new_prefix=prefix, grace_seconds=grace_seconds,
                                   at_unix_ms=now)

        try:
            key = await self._change(account_id, key_id, decide)
        except ConcurrentUpdate:
            raise ConcurrentUpdate(f"API key {key_id} changed while it was being rotated; retry") from None
        # The old secret's cached grant has no grace end, and a secret rotated out earlier loses its grace now.
        self._forget(*before)
        return RotatedKey(key=key, api_key=plaintext)


