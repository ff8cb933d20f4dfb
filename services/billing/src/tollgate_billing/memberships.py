"""Does a key's team / project name a real, active group of its account? (Key create and update ask.)"""

from __future__ import annotations

from . import repository
from .errors import AccountNotFound, GroupArchived, GroupNotFound
from .groups import GroupRecord
from .projections import Executor

__all__ = ["check_membership", "find_group"]


async def find_group(conn: Executor, account_id: str, kind: str, group_id: str) -> GroupRecord:
    group = await repository.group_record(conn, account_id, kind, group_id)
    if group is None:
        if await repository.get_account(conn, account_id) is None:
            raise AccountNotFound(f"account {account_id} not found")
        raise GroupNotFound(kind, group_id)
    return group


async def check_membership(conn: Executor, account_id: str, *, team: str | None, project: str | None) -> None:
    """A key may join only an existing, active team / project of its own account ("" or None: no check)."""
    for kind, group_id in (("team", team), ("project", project)):
        if group_id:
            group = await find_group(conn, account_id, kind, group_id)
            if group.archived:
                raise GroupArchived(f"{kind} {group_id} is archived and takes no new keys")
