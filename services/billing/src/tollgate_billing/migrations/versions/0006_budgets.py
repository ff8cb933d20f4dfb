"""budgets per key, team, project and account; the account's time zone; the budgets a hold counts against

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('budgets',
    sa.Column('budget_id', sa.String(length=100), nullable=False),
    sa.Column('account_id', sa.String(length=100), nullable=False),
    sa.Column('scope', sa.String(length=10), nullable=False),
    sa.Column('scope_id', sa.String(length=100), nullable=False),
    sa.Column('period', sa.String(length=10), nullable=False),
    sa.Column('limit_nanos', sa.BigInteger(), nullable=False),
    sa.Column('spent_nanos', sa.BigInteger(), nullable=False),
    sa.Column('held_nanos', sa.BigInteger(), nullable=False),
    sa.Column('period_start_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('created_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('updated_at_unix_ms', sa.BigInteger(), nullable=True),
    sa.Column('revision', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.account_id'], ),
    sa.PrimaryKeyConstraint('budget_id')
    )
    op.create_index('ux_budgets_scope_period', 'budgets', ['account_id', 'scope', 'scope_id', 'period'], unique=True)
    with op.batch_alter_table('accounts') as batch:
        batch.add_column(sa.Column('time_zone', sa.String(length=64), server_default='UTC', nullable=False))
    with op.batch_alter_table('holds') as batch:
        batch.add_column(sa.Column('budget_ids', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('holds') as batch:
        batch.drop_column('budget_ids')
    with op.batch_alter_table('accounts') as batch:
        batch.drop_column('time_zone')
    op.drop_index('ux_budgets_scope_period', table_name='budgets')
    op.drop_table('budgets')
