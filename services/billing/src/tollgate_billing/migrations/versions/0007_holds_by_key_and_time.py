"""holds by (key, created): the per-key RPM window Authorize counts in its group commit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 17:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_holds_key_created', 'holds', ['key_id', 'created_at_unix_ms'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_holds_key_created', table_name='holds')
