"""attempt_usage: the router's attempts of requests not rated yet (reconciliation from attempts)

Revision ID: 0005_attempt_usage
Revises: 0004
Create Date: 2026-12-03 16:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_attempt_usage'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('attempt_usage',
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('provider', sa.String(length=200), nullable=False),
    sa.Column('upstream_model', sa.String(length=200), nullable=False),
    sa.Column('upstream_request_id', sa.String(length=200), nullable=False),
    sa.Column('succeeded', sa.Boolean(), nullable=False),
    sa.Column('usage_unknown', sa.Boolean(), nullable=False),
    sa.Column('streamed', sa.Boolean(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('reasoning_tokens', sa.BigInteger(), nullable=False),
    sa.Column('ended_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('seen_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('request_id', 'attempt')
    )
    op.create_index(op.f('ix_attempt_usage_seen_at_unix_ms'), 'attempt_usage', ['seen_at_unix_ms'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_attempt_usage_seen_at_unix_ms'), table_name='attempt_usage')
    op.drop_table('attempt_usage')
