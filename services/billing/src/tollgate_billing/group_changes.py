"""Projections of teams and projects (``GroupCreated``, ``GroupUpdated``), live and in a rebuild.

Called by :func:`tollgate_billing.projections.apply_batch` right after accounts (a key created in the same batch
may name a group). An update applies only to the revision it was decided on, as for keys (see key_changes.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, insert, update
from tollgate.events.v1 import billing_pb2

from .errors import ConcurrentUpdate, InconsistentEvent
from .groups import KIND_NAMES
from .tables import groups

if TYPE_CHECKING:
    from .projections import Executor

__all__ = ["apply_created", "apply_updated"]

_INSERT = insert(groups)
_UPDATE = (
    update(groups)
    .where(groups.c.account_id == bindparam("p_account"), groups.c.kind == bindparam("p_kind"),
           groups.c.group_id == bindparam("p_group"), groups.c.revision == bindparam("p_before"))
    .values(name=bindparam("p_name"), archived_at_unix_ms=bindparam("p_archived"),
            revision=bindparam("p_revision"), updated_at_unix_ms=bindparam("p_at"))
)


def _kind(kind: int) -> str:
    name = KIND_NAMES.get(kind)  # type: ignore[call-overload]
    if name is None:
        raise InconsistentEvent(f"group kind {kind} is neither team nor project")
    return str(name)


async def apply_created(conn: Executor, events: Sequence[billing_pb2.GroupCreated]) -> None:
    if not events:
        return
    await conn.execute(_INSERT, [
        {"account_id": ev.account_id, "kind": _kind(ev.kind), "group_id": ev.group_id, "name": ev.name,
         "created_at_unix_ms": ev.created_at_unix_ms, "archived_at_unix_ms": None, "revision": 0,
         "updated_at_unix_ms": None}
        for ev in events
    ])


async def apply_updated(conn: Executor, events: Sequence[billing_pb2.GroupUpdated], *, strict: bool) -> None:
    for ev in events:
        result = await conn.execute(_UPDATE, {
            "p_account": ev.account_id, "p_kind": _kind(ev.kind), "p_group": ev.group_id,
            "p_before": ev.revision - 1, "p_revision": ev.revision, "p_name": ev.name,
            "p_archived": ev.archived_at_unix_ms or None, "p_at": ev.updated_at_unix_ms,
        })
        if int(result.rowcount) != 1:  # type: ignore[attr-defined]
            message = f"{_kind(ev.kind)} {ev.group_id} is not at revision {ev.revision - 1}: cannot update it"
            raise ConcurrentUpdate(message) if strict else InconsistentEvent(message)
