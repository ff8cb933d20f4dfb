"""The router's own small database: only the transactional outbox of its ``AttemptRecorded`` events.

An attempt is written here before the caller gets its answer, so a kill -9 loses none that were answered;
the relay publishes them to ``tollgate.attempts.v1`` and deletes them. Every change comes with an Alembic
revision in ``migrations/versions`` (``python -m tollgate_common.migrations revision tollgate_router "..."``).
"""

from __future__ import annotations

from sqlalchemy import MetaData
from tollgate_common.db import messaging_tables

__all__ = ["messaging", "metadata"]

metadata = MetaData()
messaging = messaging_tables(metadata)
