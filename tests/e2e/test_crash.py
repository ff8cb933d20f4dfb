"""kill -9 a service mid-flow: the supervisor reports it, and once it is back nothing is lost or charged twice."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from tollgate_dev.platform import Platform, PlatformConfig

from .conftest import ALL_PORTS, _kafka
from .tenant import NANOS, Tenant, mock_calls, resale_price

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def crash_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with _kafka(shared_ok=False) as kafka:
        p = Platform(PlatformConfig(var_dir=tmp_path_factory.mktemp("crash") / "var",
                                    admin_token="tga-" + secrets.token_urlsafe(16), ports=dict(ALL_PORTS),
                                    kafka_bootstrap=kafka))
        p.start()
        try:
            yield p
        finally:
            p.stop()


def _wait_for_death(platform: Platform, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(n == name for n, _ in platform.deaths):
        assert time.monotonic() < deadline, f"the supervisor never reported {name}'s death"
        time.sleep(0.1)


def test_metering_killed_while_usage_waits_loses_nothing(crash_platform: Platform) -> None:
    p = crash_platform
    tenant = Tenant.create(p)
    p.kill("metering")
    _wait_for_death(p, "metering")
    assert dict(p.deaths)["metering"] == -9

    before = len(mock_calls(p))
    client = tenant.client()
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}])
    time.sleep(1.0)
    assert tenant.balance()["held_nanos"] > 0, "without metering nothing is rated, so the holds stay open"

    p.restart("metering")
    after = tenant.settle(timeout=90)
    served = mock_calls(p)[before:]
    assert len(served) == 3
    expected = sum(resale_price(p, "gpt-4o-mini", c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"])  # type: ignore[index]
                   for c in served)
    assert after["balance_nanos"] == 10 * NANOS - expected


def test_billing_killed_and_restarted_charges_each_call_once(crash_platform: Platform) -> None:
    p = crash_platform
    tenant = Tenant.create(p)
    client = tenant.client()
    before = len(mock_calls(p))
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}])
    p.kill("billing")  # maybe before, maybe after it captured: either way exactly once
    _wait_for_death(p, "billing")
    p.restart("billing")
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "two"}])
    after = tenant.settle(timeout=90)
    served = mock_calls(p)[before:]
    assert len(served) == 2
    expected = sum(resale_price(p, "gpt-4o-mini", c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"])  # type: ignore[index]
                   for c in served)
    assert after["balance_nanos"] == 10 * NANOS - expected
