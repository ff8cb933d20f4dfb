"""Alembic environment for policy's database (see tollgate_common.migrations)."""

from tollgate_common.migrations import run_env
from tollgate_policy.tables import metadata

run_env(metadata)
