"""``tollgate status`` against the running platform: every service serving, each consumer group's lag per topic
from the offsets it keeps in its own database, outbox backlogs and holds; a service that does not answer makes
it exit 1 naming the service.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tollgate_dev.platform import Platform

from .tenant import Tenant
from .test_ops import tollgate
from .test_request_path import run_completions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

GRPC = ("router", "policy", "billing", "metering")


def status_args(platform: Platform, **override: str) -> list[str]:
    args = ["--kafka", platform.bootstrap, "--ingress", platform.ingress_url,
            "--db", f"billing={platform.database_url('billing')}",
            "--db", f"metering={platform.database_url('metering')}",
            "--outbox", f"ingress={platform.database_url('ingress')}"]
    for name in GRPC:
        args += ["--grpc", f"{name}={override.get(name, platform.grpc_addr(name))}"]
    return args


def status(platform: Platform, **override: str) -> tuple[int, dict[str, Any]]:
    result = tollgate("status", "--json", *status_args(platform, **override))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_reports_health_lag_backlogs_and_holds(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    tenant.settle()
    code, report = status(platform)
    assert code == 0 and report["result"] == "healthy", report
    assert report["health"] == {name: "SERVING" for name in ("ingress", *GRPC)}
    # Billing consumes the rated usage and metering the usage: each group's lag per topic, a count, not unknown.
    assert isinstance(report["consumer_lag"]["billing"]["tollgate.usage.rated.v1"], int)
    assert isinstance(report["consumer_lag"]["metering"]["tollgate.usage.v1"], int)
    assert set(report["outbox"]) == {"billing", "metering", "ingress"}
    assert all(isinstance(o["unpublished"], int) for o in report["outbox"].values())
    assert set(report["holds"]) == {"open", "open_nanos", "open_past_expiry", "expired_awaiting_reconciliation"}

    text = tollgate("status", *status_args(platform))
    assert text.returncode == 0 and "RESULT: HEALTHY" in text.stdout and "consumer lag" in text.stdout


def test_a_service_that_does_not_answer_makes_status_exit_1(platform: Platform) -> None:
    code, report = status(platform, router="127.0.0.1:1")
    assert code == 1 and report["health"]["router"].startswith("UNREACHABLE")
    assert report["health"]["billing"] == "SERVING"
    assert tollgate("status", "--grpc", "nope=1.2.3.4:5").returncode == 2
