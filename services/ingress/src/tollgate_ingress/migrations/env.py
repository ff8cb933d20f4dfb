"""Alembic environment for ingress's database (see tollgate_common.migrations)."""

from tollgate_common.migrations import run_env
from tollgate_ingress.tables import metadata

run_env(metadata)
