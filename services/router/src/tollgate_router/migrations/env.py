"""Alembic environment for the router's database (see tollgate_common.migrations)."""

from tollgate_common.migrations import run_env
from tollgate_router.tables import metadata

run_env(metadata)
