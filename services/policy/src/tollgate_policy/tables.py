"""Policy's tables (its own database; on PostgreSQL its own schema, ``policy``).

``policy_versions`` keeps every version of every account's rules, never updated in place: the current policy is
the highest version, the history is the audit trail ("which rules decided request X" = the ``policy_version`` on
its findings), and the primary key (account_id, version) is what makes two concurrent SetPolicy calls for one
account unable to both claim the same next version.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text

__all__ = ["metadata", "policy_versions"]

metadata = MetaData()

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("account_id", String(200), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    #: JSON object {detector: action} of the rules the account set (defaults are not stored).
    Column("rules", Text, nullable=False),
    Column("created_at_unix_ms", BigInteger, nullable=False),
)
