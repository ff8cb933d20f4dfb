"""Schemathesis over ingress's OpenAPI document, against the real platform: a real ingress process with the real
billing, policy, router and metering behind it (their own processes, SQLite, the embedded broker) and the mock
upstream as the only stand-in.

Every public and admin operation gets generated requests (valid and invalid bodies, parameters and headers)
carrying a valid credential: the fuzz tenant's API key on ``/v1``, the admin token on ``/admin/v1``. Half the cases
are steered onto real objects (the tenant's account, a sacrificial key of it, a served model) so they reach
billing, policy and the upstream instead of stopping at a 404. Each answer is checked for: no 5xx, a documented
status, content type, headers and body, and (``ignored_auth``) that the same request without its credential, or
with a wrong one, is refused.

In the normal suite: ``TOLLGATE_FUZZ_EXAMPLES`` (default 10) generated cases per operation, about 400 in all, the
same ones every run (the suite's Hypothesis profile is derandomized; root conftest.py). ``make
fuzz`` runs 150 per operation and the coverage phase (about 7,000 cases) and prints the figures (also written to
``TOLLGATE_FUZZ_REPORT``, default the platform's var directory).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tollgate_dev.platform import Platform
from tollgate_ingress.openapi import document

from .conftest import _kafka, _start
from .tenant import Tenant

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("TOLLGATE_FUZZ_EXAMPLES", "10"))
#: Schemathesis's coverage phase (boundary values, each field missing or of the wrong type: about 1,400 fixed
#: cases) runs in ``make fuzz``; the normal suite keeps to the random ones.
PHASES = [Phase.explicit, Phase.generate] if os.environ.get("TOLLGATE_FUZZ_COVERAGE") == "1" else [Phase.generate]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, ignored_auth]
#: A served model per wire format, for the cases steered onto real objects.
MODELS = {"/v1/messages": "claude-3-5-haiku", "/v1/messages/count_tokens": "claude-3-5-haiku",
          "/v1/embeddings": "text-embedding-3-small"}

#: Figures for the whole run: cases sent, answers by status, failures by check.
FIGURES: dict[str, Counter[str]] = {"cases": Counter(), "status": Counter(), "failures": Counter()}
#: The credentials and real objects of the fuzz platform (set by the ``fuzz_target`` fixture).
TARGET: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform of its own: the fuzzer rewrites its tenant's policy and keys, and sends thousands of wrong
    credentials (so ingress's failed-credential throttle is off here, or the admin token would be throttled
    along with them; the throttle has its own tests)."""
    with _kafka(shared_ok=False) as kafka:
        platform = _start(tmp_path_factory.mktemp("fuzz"), kafka,
                          extra_env={"ingress": {"INGRESS_AUTH_FAILURES_PER_MINUTE": "0"}})
        try:
            yield platform
        finally:
            platform.stop()
    assert not platform.deaths, f"a service died during the fuzz run: {platform.deaths}"


@pytest.fixture(scope="module")
def fuzz_target(fuzz_platform: Platform) -> Iterator[None]:
    tenant = Tenant.create(fuzz_platform, credit="1000", label="fuzz")
    spare = fuzz_platform.admin("POST", f"/admin/v1/accounts/{tenant.account_id}/keys", {"label": "spare"})
    TARGET.update(url=fuzz_platform.ingress_url, api_key=tenant.api_key, admin=fuzz_platform.config.admin_token,
                  account_id=tenant.account_id, key_id=str(spare["id"]))
    served = requests.get(f"{fuzz_platform.ingress_url}/openapi.json", timeout=10).json()
    assert served == document(), "the process serves another document than the one the cases come from"
    yield
    _report(Path(os.environ.get("TOLLGATE_FUZZ_REPORT", fuzz_platform.config.var_dir / "fuzz-figures.txt")))


def _report(path: Path) -> None:
    lines = [f"cases: {sum(FIGURES['cases'].values())} over {len(FIGURES['cases'])} operations",
             "answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(FIGURES["status"].items())),
             "failures by check: " + (", ".join(f"{c}: {n}" for c, n in sorted(FIGURES["failures"].items()))
                                      or "none")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


#: The document the running ingress serves (checked equal in ``fuzz_target``); loaded at collection, as pytest's
#: parametrisation needs the operations before any fixture runs.
schema = schemathesis.openapi.from_dict(document())


@schema.auth(refresh_interval=None, retry_on=[])
class Credentials:
    """The admin token on the admin API, the tenant's key elsewhere (as x-api-key on Anthropic's routes).

    Schemathesis builds its coverage cases (boundary values, missing fields) at collection, before the platform
    exists: those carry a placeholder that :func:`_with_credentials` replaces just before the call."""

    def get(self, case: Any, context: Any) -> str:
        role = "admin" if case.path.startswith("/admin/") else "api_key"
        return TARGET.get(role) or f"<{role}>"

    def set(self, case: Any, data: str, context: Any) -> None:
        if case.path.startswith("/v1/messages"):
            case.headers["x-api-key"] = data
        else:
            case.headers["Authorization"] = f"Bearer {data}"


def _with_credentials(case: Any) -> None:
    for name in ("Authorization", "x-api-key"):
        value = case.headers.get(name) if case.headers else None
        if isinstance(value, str):
            case.headers[name] = value.replace("<admin>", TARGET["admin"]).replace("<api_key>", TARGET["api_key"])


def _steer(case: Any, number: int) -> None:
    """Onto real objects: every other case of an operation (by its number, so a derandomized run, the suite's
    default, sends the same requests every time)."""
    if number % 2:
        return
    params = case.path_parameters or {}
    if "account_id" in params:
        params["account_id"] = TARGET["account_id"]
    if "key_id" in params:
        params["key_id"] = TARGET["key_id"]
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODELS.get(case.path, "gpt-4o-mini")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES,
          suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: Any, fuzz_target: None) -> None:
    _with_credentials(case)
    label = case.operation.label
    FIGURES["cases"][label] += 1
    _steer(case, FIGURES["cases"][label])
    session = requests.Session()  # the ignored_auth probes reuse it
    response = case.call(base_url=TARGET["url"], session=session, timeout=60)
    FIGURES["status"][str(response.status_code)] += 1
    failures: list[Failure] = []
    try:
        case.validate_response(response, checks=CHECKS,
                               transport_kwargs={"base_url": TARGET["url"], "session": session})
    except FailureGroup as group:
        failures.extend(group.exceptions)
    except Failure as failure:
        failures.append(failure)
    for failure in failures:
        FIGURES["failures"][type(failure).__name__] += 1
    assert not failures, "\n".join(f"{label}: {f.title}: {f.message}" for f in failures) + "\n" + case.as_curl_command()
