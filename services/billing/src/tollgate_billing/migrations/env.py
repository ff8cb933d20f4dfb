"""Alembic environment for billing's database (see tollgate_common.migrations)."""

from tollgate_billing.tables import metadata
from tollgate_common.migrations import run_env

run_env(metadata)
