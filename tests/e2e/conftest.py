"""End-to-end fixtures: the whole platform as real processes, started exactly as ``make run`` starts it.

Broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else Apache Kafka in testcontainers when a Docker engine answers; else
the embedded Tansu broker. Databases: SQLite files; the PostgreSQL variant uses testcontainers with Docker, else
the local server at 127.0.0.1:5432, else it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tollgate_dev.broker import docker_available
from tollgate_dev.platform import Platform, PlatformConfig
from tollgate_dev.testing import local_postgres_url, postgres_unavailable_reason

ALL_PORTS = {name: 0 for name in ("ingress", "router", "policy", "billing", "metering", "mock", "broker")}


@contextmanager
def _kafka(shared_ok: bool) -> Iterator[str | None]:
    """A broker for ONE platform (two platforms must never share consumer groups and topics).

    None means: let the platform start its own embedded broker.
    """
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        if not shared_ok:
            pytest.skip("KAFKA_BOOTSTRAP_SERVERS is shared; a second platform on it would mix consumer groups")
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        yield None


def _start(tmp: Path, kafka: str | None, databases: dict[str, str] | None = None, *,
           ports: dict[str, int] | None = None, extra_env: dict[str, dict[str, str]] | None = None) -> Platform:
    platform = Platform(
        PlatformConfig(
            var_dir=tmp / "var",
            admin_token="tga-" + secrets.token_urlsafe(16),
            ports={**ALL_PORTS, **(ports or {})},
            kafka_bootstrap=kafka,
            database_urls=databases or {},
            extra_env=extra_env or {},
        )
    )
    platform.start()
    return platform


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with _kafka(shared_ok=True) as kafka:
        p = _start(tmp_path_factory.mktemp("platform"), kafka)
        try:
            yield p
        finally:
            p.stop()
    assert not p.deaths, f"a service died during the tests: {p.deaths}"


async def _create_database(url: str, name: str, drop: bool = False) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username or "postgres",
                                 password=u.password, database=u.database)
    try:
        if drop:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    url = local_postgres_url()
    if url is None:
        pytest.skip(postgres_unavailable_reason())
    yield url


@pytest.fixture(scope="session")
def pg_platform(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Platform]:
    """The platform with billing, metering and policy on PostgreSQL (a fresh database for this run)."""
    from sqlalchemy.engine import make_url

    name = f"tollgate_e2e_{uuid.uuid4().hex[:10]}"
    asyncio.run(_create_database(postgres_server, name))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    try:
        with _kafka(shared_ok=False) as kafka:
            p = _start(tmp_path_factory.mktemp("pg-platform"), kafka,
                       {svc: url for svc in ("billing", "metering", "policy")})
            try:
                yield p
            finally:
                p.stop()
    finally:
        asyncio.run(_create_database(postgres_server, name, drop=True))
    assert not p.deaths, f"a service died during the tests: {p.deaths}"
