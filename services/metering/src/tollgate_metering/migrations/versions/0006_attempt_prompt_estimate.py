"""attempt_usage.prompt_tokens_estimate: the caller's prompt estimate, to charge a crashed request by estimate

Revision ID: 0006_attempt_prompt_estimate
Revises: 0005_attempt_usage
Create Date: 2026-12-03 17:58:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006_attempt_prompt_estimate'
down_revision: str | Sequence[str] | None = '0005_attempt_usage'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('attempt_usage', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prompt_tokens_estimate', sa.BigInteger(), nullable=False,
                                      server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('attempt_usage', schema=None) as batch_op:
        batch_op.drop_column('prompt_tokens_estimate')
