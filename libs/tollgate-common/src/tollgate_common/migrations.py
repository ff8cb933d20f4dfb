"""Schema migrations, one Alembic history per service, run by the service at start.

Each service keeps its history in ``tollgate_<name>/migrations/`` (inside the package, so an installed service has
it): a three-line ``env.py`` calling :func:`run_env` with the service's ``MetaData``, a ``script.py.mako`` and
``versions/``. ``migrate`` brings a database to the newest revision; on PostgreSQL it serialises concurrent
replicas with an advisory lock and works inside the service's schema (the connection's ``search_path``).

New revision after changing ``tables.py``::

    .venv/bin/python -m tollgate_common.migrations revision tollgate_billing "add key revocation"

which autogenerates it by comparing a database migrated to the current head with the code's tables.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import zlib
from typing import Any

from alembic import command, context
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import create_engine, is_postgres

__all__ = ["migrate", "open_database", "run_env", "schema_drift"]


def _config(package: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{package}:migrations")
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, package: str, *, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade the service's database (``package`` e.g. ``"tollgate_billing"``) to ``revision``. Idempotent."""
    async with engine.begin() as conn:
        if is_postgres(engine):
            lock = zlib.crc32(f"tollgate-migrate:{package}:{schema}".encode())
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
            if schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

        def upgrade(sync_conn: Connection) -> None:
            command.upgrade(_config(package, sync_conn), revision)

        await conn.run_sync(upgrade)


async def open_database(url: str, package: str, *, schema: str | None = None, pool_size: int = 10) -> AsyncEngine:
    """An engine on a service's database (``package`` e.g. ``"tollgate_billing"``), migrated to the newest
    revision: what every service does first at start, written once. The engine is disposed if migrating fails, so
    a service that cannot start leaves no pool (nor SQLite file handle) behind."""
    engine = create_engine(url, schema=schema, pool_size=pool_size)
    try:
        await migrate(engine, package, schema=schema)
    except BaseException:
        await engine.dispose()
        raise
    return engine


def run_env(metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``."""
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through tollgate_common.migrations.migrate, not the alembic command")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def schema_drift(engine: AsyncEngine, metadata: MetaData) -> list[Any]:
    """Differences between the database and the code's tables; ``[]`` when the migrations build exactly them."""

    def compare(sync_conn: Connection) -> list[Any]:
        diffs = compare_metadata(MigrationContext.configure(sync_conn, opts={"compare_type": True}), metadata)
        return [d for d in diffs if not (isinstance(d, tuple) and d and d[0] == "remove_table"
                                         and d[1].name == "alembic_version")]

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def _revision(package: str, message: str) -> None:
    import importlib

    metadata = importlib.import_module(f"{package}.tables").metadata
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/head.db")
        await migrate(engine, package)
        async with engine.begin() as conn:

            def generate(sync_conn: Connection) -> None:
                from alembic.script import ScriptDirectory

                config = _config(package, sync_conn)
                config.attributes["target_metadata"] = metadata
                number = sum(1 for _ in ScriptDirectory.from_config(config).walk_revisions()) + 1
                command.revision(config, message=message, autogenerate=True, rev_id=f"{number:04d}")

            await conn.run_sync(generate)
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate_common.migrations")
    sub = parser.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("revision", help="autogenerate a new revision for a service from its tables.py")
    rev.add_argument("package", help="e.g. tollgate_billing")
    rev.add_argument("message")
    args = parser.parse_args()
    asyncio.run(_revision(args.package, args.message))


if __name__ == "__main__":
    main()
