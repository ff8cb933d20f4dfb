"""alerts: budget thresholds and their last crossing, the account's "balance below X" (tollgate_billing.alerts)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 13:11:41.074927
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('budgets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('alert_thresholds', sa.String(length=100), server_default='50,80,100', nullable=False))
        batch_op.add_column(sa.Column('last_crossed_percent', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_crossed_at_unix_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('last_crossed_period_start_unix_ms', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_crossed_revision', sa.BigInteger(), server_default='0', nullable=False))

    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('low_balance_nanos', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('low_balance_revision', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('low_balance_low', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('low_balance_sequence', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('low_balance_at_unix_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('low_balance_updated_at_unix_ms', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.drop_column('low_balance_updated_at_unix_ms')
        batch_op.drop_column('low_balance_at_unix_ms')
        batch_op.drop_column('low_balance_sequence')
        batch_op.drop_column('low_balance_low')
        batch_op.drop_column('low_balance_revision')
        batch_op.drop_column('low_balance_nanos')

    with op.batch_alter_table('budgets', schema=None) as batch_op:
        batch_op.drop_column('last_crossed_revision')
        batch_op.drop_column('last_crossed_period_start_unix_ms')
        batch_op.drop_column('last_crossed_at_unix_ms')
        batch_op.drop_column('last_crossed_percent')
        batch_op.drop_column('alert_thresholds')
