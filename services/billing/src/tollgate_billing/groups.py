"""Teams and projects: named groups inside an account that API keys belong to. Pure decisions, like domain.py.

A group's id is chosen by the client (``"research"``) or generated (``team_…``); it is unique per account and kind,
never changes, and is what a key's ``team`` / ``project`` holds, what usage events carry and what policy scopes
(``team:<id>``) name. The name is for people and may change. Archiving is reversible and only stops new keys from
joining: keys already in an archived group keep working and keep being metered under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tollgate.events.v1 import billing_pb2

from .errors import GroupExists, InvalidArgument

__all__ = ["KIND_NAMES", "GroupRecord", "check_group_id", "group_created", "group_updated", "kind_name"]

KIND_NAMES = {billing_pb2.GROUP_KIND_TEAM: "team", billing_pb2.GROUP_KIND_PROJECT: "project"}
#: Safe in a URL path, a policy scope ("team:<id>") and a log line.
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_NAME = 200


def kind_name(kind: int) -> str:
    name = KIND_NAMES.get(kind)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument("kind must be team or project")
    return str(name)


def check_group_id(group_id: str) -> str:
    if not _GROUP_ID.match(group_id):
        raise InvalidArgument("a team or project id is 1 to 100 letters, digits, '_', '.' or '-', starting with a "
                              "letter or digit")
    return group_id


def _name(name: str) -> str:
    if not name.strip() or len(name) > MAX_NAME:
        raise InvalidArgument(f"name must be 1 to {MAX_NAME} characters")
    return name


@dataclass(frozen=True, slots=True)
class GroupRecord:
    account_id: str
    kind: str
    group_id: str
    name: str
    created_at_unix_ms: int
    archived_at_unix_ms: int | None
    revision: int
    updated_at_unix_ms: int | None

    @property
    def archived(self) -> bool:
        return self.archived_at_unix_ms is not None


def group_created(account_id: str, kind: int, group_id: str, name: str, at_unix_ms: int) -> billing_pb2.GroupCreated:
    kind_name(kind)
    return billing_pb2.GroupCreated(account_id=account_id, kind=kind, group_id=check_group_id(group_id),  # type: ignore[arg-type]
                                    name=_name(name), created_at_unix_ms=at_unix_ms)


def same_creation(existing: GroupRecord, event: billing_pb2.GroupCreated) -> GroupRecord:
    """A create with a client-chosen id that exists: the same name is a retry (idempotent), another is a conflict."""
    if existing.name != event.name:
        raise GroupExists(f"{existing.kind} {existing.group_id} already exists with another name")
    return existing


def group_updated(
    group: GroupRecord, kind: int, *, name: str | None, archived: bool | None, at_unix_ms: int
) -> billing_pb2.GroupUpdated | None:
    """The group after a rename / archive / restore; None when nothing changes."""
    new_name = group.name if name is None else _name(name)
    archived_at = group.archived_at_unix_ms
    if archived is True and archived_at is None:
        archived_at = at_unix_ms
    elif archived is False:
        archived_at = None
    if new_name == group.name and archived_at == group.archived_at_unix_ms:
        return None
    return billing_pb2.GroupUpdated(
        account_id=group.account_id, kind=kind, group_id=group.group_id, revision=group.revision + 1,  # type: ignore[arg-type]
        name=new_name, archived_at_unix_ms=archived_at or 0, updated_at_unix_ms=at_unix_ms,
    )
