"""parked_events: records the usage consumer could not apply

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:24:24.108936
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('parked_events',
    sa.Column('group_id', sa.String(length=200), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('event_source', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('parked_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('group_id', 'topic', 'partition', 'offset')
    )


def downgrade() -> None:
    op.drop_table('parked_events')
