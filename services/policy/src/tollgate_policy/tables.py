"""Policy's tables (its own database; on PostgreSQL its own schema, ``policy``).

``policy_versions`` keeps every version of every account's rules, never updated in place: the current policy is
the highest version, the history is the audit trail ("which rules decided request X" = the ``policy_version`` on
its findings), and the primary key (account_id, version) is what makes two concurrent SetPolicy calls for one
account unable to both claim the same next version.

A version's ``kind`` is "enforced" (the policy in force from then on), "shadow" (evaluated beside the enforced one
and only recorded) or "discard" (ends a pending shadow). ``document`` holds the whole document (all scopes, see
``domain.py``); rows from before scopes existed have only ``rules`` (the account's rules).

``outbox`` (with the other messaging tables) carries the PolicyDecided events to Kafka (``events.py``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text
from tollgate_common.db import messaging_tables

__all__ = ["messaging", "metadata", "policy_versions"]

metadata = MetaData()

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("account_id", String(200), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    #: JSON object {detector: action} of the rules the account set (defaults are not stored).
    Column("rules", Text, nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
    #: JSON of the whole document (domain.PolicySet.to_json); NULL on rows written before scopes existed.
    Column("document", Text, nullable=True),
    Column("kind", String(16), nullable=False, server_default="enforced"),
)

messaging = messaging_tables(metadata)
