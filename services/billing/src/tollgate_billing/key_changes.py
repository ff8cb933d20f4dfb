"""Projections of a key's changes (``ApiKeyUpdated``, ``ApiKeyRevoked``, ``ApiKeyRotated``), live and in a rebuild.

Called by :func:`tollgate_billing.projections.apply_batch`, in the events' own order (a key may be updated, rotated
and revoked within one batch). Each change is one guarded UPDATE: it applies only to the revision it was decided
on (``revision = n - 1``), so of two concurrent admin writes from the same starting point one fails with
:class:`~tollgate_billing.errors.ConcurrentUpdate` (live), and a change that does not fit a rebuilt key is an
:class:`~tollgate_billing.errors.InconsistentEvent` (replay).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy import bindparam, func, update
from tollgate.events.v1 import billing_pb2

from .errors import ConcurrentUpdate, InconsistentEvent
from .tables import api_keys

if TYPE_CHECKING:
    from .projections import Executor

__all__ = ["KINDS", "apply"]

KINDS: tuple[type[Message], ...] = (billing_pb2.ApiKeyUpdated, billing_pb2.ApiKeyRevoked, billing_pb2.ApiKeyRotated)


def _change(**values: Any) -> Any:
    return (
        update(api_keys)
        .where(api_keys.c.key_id == bindparam("p_key"), api_keys.c.revision == bindparam("p_before"))
        .values(revision=bindparam("p_revision"), updated_at_unix_ms=bindparam("p_at"), **values)
    )


_UPDATED = _change(label=bindparam("p_label"), allowed_models=bindparam("p_models"),
                   expires_at_unix_ms=bindparam("p_expires"),
                   # team / project are optional on the event: NULL leaves them as they are
                   team=func.coalesce(bindparam("p_team"), api_keys.c.team),
                   project=func.coalesce(bindparam("p_project"), api_keys.c.project))
_REVOKED = _change(revoked_at_unix_ms=bindparam("p_at"))
_ROTATED = _change(key_hash=bindparam("p_hash"), prefix=bindparam("p_prefix"),
                   previous_key_hash=bindparam("p_previous_hash"), previous_prefix=bindparam("p_previous_prefix"),
                   previous_valid_until_unix_ms=bindparam("p_previous_until"))


def _statement(ev: Message) -> tuple[Any, dict[str, Any]]:
    base = {"p_key": ev.key_id, "p_before": ev.revision - 1, "p_revision": ev.revision}  # type: ignore[attr-defined]
    if isinstance(ev, billing_pb2.ApiKeyUpdated):
        return _UPDATED, {**base, "p_at": ev.updated_at_unix_ms, "p_label": ev.label,
                          "p_models": json.dumps(sorted(ev.allowed_models)),
                          "p_expires": ev.expires_at_unix_ms or None,
                          "p_team": ev.team if ev.HasField("team") else None,
                          "p_project": ev.project if ev.HasField("project") else None}
    if isinstance(ev, billing_pb2.ApiKeyRevoked):
        return _REVOKED, {**base, "p_at": ev.revoked_at_unix_ms}
    if isinstance(ev, billing_pb2.ApiKeyRotated):
        graced = ev.previous_valid_until_unix_ms > 0  # no grace: the old secret is simply gone
        return _ROTATED, {**base, "p_at": ev.rotated_at_unix_ms, "p_hash": ev.key_hash, "p_prefix": ev.prefix,
                          "p_previous_hash": ev.previous_key_hash if graced else None,
                          "p_previous_prefix": ev.previous_prefix if graced else None,
                          "p_previous_until": ev.previous_valid_until_unix_ms if graced else None}
    raise InconsistentEvent(f"{type(ev).__name__} is not a key change")


async def apply(conn: Executor, events: Sequence[Message], *, strict: bool) -> None:
    """Apply key changes one by one, in order (they are rare: admin calls, never the hot path)."""
    for ev in events:
        statement, params = _statement(ev)
        result = await conn.execute(statement, params)
        if int(result.rowcount) != 1:  # type: ignore[attr-defined]
            message = (f"key {ev.key_id} is not at revision {ev.revision - 1}: "  # type: ignore[attr-defined]
                       f"cannot apply {type(ev).__name__}")
            raise ConcurrentUpdate(message) if strict else InconsistentEvent(message)
