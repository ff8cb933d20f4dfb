"""webhooks: an account's alert webhook (from the log), its secret, the delivery queue, its attempts and cursor

Revision ID: 0010_webhooks
Revises: 0009_credits_statements
Create Date: 2026-12-04 18:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010_webhooks'
down_revision: str | Sequence[str] | None = '0009_credits_statements'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('webhooks',
    sa.Column('account_id', sa.String(length=100), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('events', sa.String(length=200), nullable=False),
    sa.Column('revision', sa.BigInteger(), nullable=False),
    sa.Column('secret_version', sa.BigInteger(), nullable=False),
    sa.Column('created_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('updated_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at_unix_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.account_id'], ),
    sa.PrimaryKeyConstraint('account_id')
    )
    op.create_table('webhook_secrets',
    sa.Column('account_id', sa.String(length=100), nullable=False),
    sa.Column('secret_version', sa.BigInteger(), nullable=False),
    sa.Column('secret', sa.String(length=100), nullable=False),
    sa.Column('created_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.account_id'], ),
    sa.PrimaryKeyConstraint('account_id')
    )
    cursor = op.create_table('webhook_cursor',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('last_outbox_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('webhook_deliveries',
    sa.Column('delivery_id', _ID, autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=100), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('claimed_until_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=False),
    sa.Column('created_at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('delivered_at_unix_ms', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('delivery_id')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ux_webhook_deliveries_event', ['account_id', 'event_id'], unique=True)
        batch_op.create_index('ix_webhook_deliveries_due', ['status', 'next_attempt_at_unix_ms'], unique=False)
    op.create_table('webhook_attempts',
    sa.Column('delivery_id', sa.BigInteger(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('at_unix_ms', sa.BigInteger(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('error', sa.String(length=500), nullable=False),
    sa.Column('duration_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('delivery_id', 'attempt')
    )
    # The queue starts at the log's end: no webhook can be older than this migration, so nothing before it is due.
    start = op.get_bind().execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM outbox")).scalar_one()
    op.bulk_insert(cursor, [{"name": "alerts", "last_outbox_id": int(start)}])


def downgrade() -> None:
    op.drop_table('webhook_attempts')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_due')
        batch_op.drop_index('ux_webhook_deliveries_event')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_cursor')
    op.drop_table('webhook_secrets')
    op.drop_table('webhooks')
