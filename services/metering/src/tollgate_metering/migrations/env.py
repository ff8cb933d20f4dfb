"""Alembic environment for metering's database (see tollgate_common.migrations)."""

from tollgate_common.migrations import run_env
from tollgate_metering.tables import metadata

run_env(metadata)
