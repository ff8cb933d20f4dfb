"""Team and project commands and queries.

The same shape as the key commands (key_admin.py): read, decide (groups.py), ``repository.record`` in one write
transaction on billing's write queue.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from tollgate.events.v1 import billing_pb2
from tollgate_common.ids import new_id

from . import repository
from .application import Billing
from .errors import AccountNotFound
from .groups import GroupRecord, group_created, group_updated, kind_name, same_creation
from .memberships import find_group as _group

__all__ = ["GroupAdmin"]


class GroupAdmin:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def create_group(self, account_id: str, kind: int, name: str, group_id: str = "") -> tuple[GroupRecord, bool]:
        """Create a team or project: (group, created). With a client-chosen id the call is idempotent."""
        label = kind_name(kind)
        event = group_created(account_id, kind, group_id or new_id(label), name, self.billing._now_ms())
        try:
            async with self.billing._write() as conn:
                if await repository.get_account(conn, account_id) is None:
                    raise AccountNotFound(f"account {account_id} not found")
                existing = await repository.group_record(conn, account_id, label, event.group_id)
                if existing is not None:
                    return same_creation(existing, event), False
                await repository.record(conn, event)
        except IntegrityError:  # a concurrent twin with the same id committed first
            async with self.billing._read() as conn:
                return same_creation(await _group(conn, account_id, label, event.group_id), event), False
        self.billing._committed()
        return await self.get_group(account_id, kind, event.group_id), True

    async def get_group(self, account_id: str, kind: int, group_id: str) -> GroupRecord:
        async with self.billing._read() as conn:
            return await _group(conn, account_id, kind_name(kind), group_id)

    async def list_groups(self, account_id: str, kind: int, *, include_archived: bool = False) -> list[GroupRecord]:
        label = kind_name(kind)
        async with self.billing._read() as conn:
            if await repository.get_account(conn, account_id) is None:
                raise AccountNotFound(f"account {account_id} not found")
            return await repository.group_records(conn, account_id, label, include_archived=include_archived)

    async def update_group(
        self, account_id: str, kind: int, group_id: str, *, name: str | None = None, archived: bool | None = None
    ) -> GroupRecord:
        """Rename, archive or restore (None = leave as is)."""
        label = kind_name(kind)
        now = self.billing._now_ms()
        event: billing_pb2.GroupUpdated | None = None
        async with self.billing._write() as conn:
            group = await _group(conn, account_id, label, group_id)
            event = group_updated(group, kind, name=name, archived=archived, at_unix_ms=now)
            if event is not None:
                await repository.record(conn, event)
                group = await _group(conn, account_id, label, group_id)
        if event is not None:
            self.billing._committed()
        return group
