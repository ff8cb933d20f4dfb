"""``tollgate usage providers`` against the running platform: an account's calls, one of them failed upstream by
the mock provider, come back per provider deployment with their attempts, outcomes, the tokens the provider
reported and their upstream cost (computed here independently from metering's price book), as CSV and JSON,
through the installed command reading the real broker.
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tollgate_dev.platform import Platform

from .tenant import Tenant, price_book
from .test_ops import tollgate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def arm_fault(platform: Platform, rule: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{platform.mock_url}/_mock/faults", data=json.dumps(rule).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status in (200, 201)


def providers(platform: Platform, account: str, *extra: str) -> Any:
    result = tollgate("usage", "providers", "--kafka", platform.bootstrap, "--account", account,
                      "--db", f"metering={platform.database_url('metering')}", *extra, platform=platform)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_provider_usage_counts_attempts_outcomes_tokens_and_upstream_cost(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform, credit="10.00")
    client = tenant.client()
    started = int(time.time() * 1000)
    arm_fault(platform, {"fault": "500", "times": 1})
    served: list[tuple[int, int]] = []
    errors = 0
    for n in range(4):
        try:
            reply = client.chat.completions.create(model="gpt-4o-mini",
                                                   messages=[{"role": "user", "content": f"count {n}"}])
        except Exception:  # the armed 500, if the router did not retry it
            errors += 1
            continue
        assert reply.usage is not None
        served.append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
    tenant.settle()
    book = price_book(platform)
    price = next(p for p in book.prices if p.model == "gpt-4o-mini")
    want_cost = sum(p * price.input_price_nanos + c * price.output_price_nanos for p, c in served)

    report: dict[str, Any] = {}
    for _ in range(20):  # the router's outbox may still be publishing the last attempts
        report = json.loads(providers(platform, tenant.account_id, "--format", "json").stdout)
        lines = report["lines"]
        if sum(ln["succeeded"] for ln in lines) == len(served) and sum(ln["failed"] for ln in lines) >= 1:
            break
        time.sleep(0.5)
    assert report["producers_verified"] is True and report["accounts"] == [tenant.account_id]
    (line,) = report["lines"]  # one deployment serves gpt-4o-mini on the dev platform
    assert line["model"] == "gpt-4o-mini" and line["provider"] and line["deployment"] and line["upstream_model"]
    assert line["succeeded"] == len(served) and line["failed"] == 1 and line["upstream_errors"] == 1
    assert line["attempts"] == len(served) + 1 and len(served) + errors == 4
    assert line["prompt_tokens"] == sum(p for p, _ in served)
    assert line["completion_tokens"] == sum(c for _, c in served)
    assert line["cached_prompt_tokens"] == 0  # so the upstream cost is input + output at their prices
    assert line["upstream_cost_nanos"] == want_cost > 0 and line["unpriced_attempts"] == 0
    assert line["currency"] == book.currency
    assert started <= line["first_attempt_unix_ms"] <= line["last_attempt_unix_ms"]
    totals = report["totals_by_provider"][f"{line['provider']} ({book.currency})"]
    assert totals["upstream_cost_nanos"] == want_cost and totals["attempts"] == line["attempts"]

    # The same as CSV, written to a file: one row per line, the cost in nanos and as an exact decimal.
    out = tmp_path / "providers.csv"
    providers(platform, tenant.account_id, "--format", "csv", "--out", str(out))
    (row,) = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert int(row["attempts"]) == line["attempts"] and int(row["upstream_cost_nanos"]) == want_cost
    assert row["upstream_cost"] == f"{want_cost // 10**9}.{want_cost % 10**9:09d}"

    # A window that ends before these calls holds none of them; the text report names the totals.
    assert json.loads(providers(platform, tenant.account_id, "--to", str(started - 1), "--json").stdout)["lines"] == []
    text = providers(platform, tenant.account_id).stdout
    assert f"total {line['provider']} ({book.currency}): {line['attempts']} attempts" in text


def test_usage_bad_usage_exits_2(tmp_path: Path) -> None:
    assert tollgate("usage", "providers", "--help").returncode == 0
    backwards = tollgate("usage", "providers", "--from", "2026-12-02", "--to", "2026-12-01")
    assert backwards.returncode == 2 and "--to" in backwards.stderr
    text_out = tollgate("usage", "providers", "--out", str(tmp_path / "x.txt"))
    assert text_out.returncode == 2 and "--format" in text_out.stderr
    bad_format = tollgate("usage", "providers", "--format", "xml")
    assert bad_format.returncode == 2
