"""``tollgate reconcile --provider-usage`` against the running platform, with the provider's usage export made from
the mock provider's own record of the calls it served (``GET /_mock/calls``: the provider's ground truth), in two
shapes: per request (CSV, the id the provider answered with) and per hour bucket (OpenAI's usage API JSON). The
untouched files reconcile; each planted difference is listed by its id, and the command exits 1.
"""

from __future__ import annotations

import csv
import json
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tollgate_dev.platform import Platform

from .tenant import Tenant, price_book
from .test_ops import tollgate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

COLUMNS = ["request_id", "timestamp", "model", "input_tokens", "output_tokens", "cost"]


def served_by_mock(platform: Platform, since_iso: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{platform.mock_url}/_mock/calls", timeout=10) as reply:
        calls = json.loads(reply.read())
    return [c for c in calls if c["received_at"] >= since_iso and c["status"] == 200 and c["usage"]]


def reconcile(platform: Platform, account: str, usage_file: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = tollgate("reconcile", "--kafka", platform.bootstrap, "--account", account, "--grace", "0", "--json",
                      "--db", f"billing={platform.database_url('billing')}",
                      "--db", f"metering={platform.database_url('metering')}",
                      "--provider-usage", str(usage_file), *extra, platform=platform)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def differences(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(g["kind"], g["id"]) for g in report["gaps"]}


def test_a_providers_usage_export_reconciles_and_each_planted_difference_is_named(
    platform: Platform, tmp_path: Path
) -> None:
    tenant = Tenant.create(platform, credit="10.00")
    client = tenant.client()
    started_s = int(time.time()) + 1  # from the next whole second: the hour bucket below starts there
    time.sleep(started_s - time.time())
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started_s)) + ".000Z"
    for n in range(4):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"invoice {n}"}])
    tenant.settle()
    book = price_book(platform)
    price = next(p for p in book.prices if p.model == "gpt-4o-mini")

    calls = served_by_mock(platform, since)
    assert len(calls) == 4
    rows = []
    for c in calls:
        prompt, completion = c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"]
        nanos = prompt * price.input_price_nanos + completion * price.output_price_nanos
        rows.append({"request_id": c["id"], "timestamp": c["received_at"], "model": c["model"],
                     "input_tokens": prompt, "output_tokens": completion, "cost": str(Decimal(nanos).scaleb(-9))})

    # The provider's file as it came: nothing differs (the router's outbox may still be publishing the last).
    exact = write_csv(tmp_path / "usage.csv", rows)
    for _ in range(20):
        status, report = reconcile(platform, tenant.account_id, exact)
        if status == 0:
            break
        time.sleep(0.5)
    assert status == 0, report["gaps"]
    assert report["provider_usage"]["mode"] == "request" and report["provider_usage"]["matched"] == 4
    assert report["provider_usage"]["differences"] == 0

    # Planted: the provider counts one more output token on one call, bills another at a different price, has a
    # call we never made, and lacks one we made (inside the file's period).
    planted = [dict(r) for r in rows]
    planted[0]["output_tokens"] += 1
    planted[1]["cost"] = str(Decimal(planted[1]["cost"]) + Decimal("0.000001"))
    missing = planted.pop(2)
    planted.append({**rows[3], "request_id": "req_not_ours", "output_tokens": 3})
    status, report = reconcile(platform, tenant.account_id, write_csv(tmp_path / "planted.csv", planted))
    assert status == 1
    assert differences(report) == {("provider_tokens_differ", rows[0]["request_id"]),
                                   ("provider_cost_differs", rows[1]["request_id"]),
                                   ("tollgate_only", missing["request_id"]),
                                   ("provider_only", "req_not_ours")}
    detail = next(g["detail"] for g in report["gaps"] if g["kind"] == "provider_tokens_differ")
    assert detail == f"output tokens: provider {rows[0]['output_tokens'] + 1}, tollgate {rows[0]['output_tokens']}"

    # The same calls as OpenAI's usage API reports them (one bucket from the first call on, no ids): the totals
    # agree; then the provider counts one request more.
    bucket = {"object": "page", "data": [{"object": "bucket", "start_time": started_s,
                                          "end_time": int(time.time()) + 1, "results": [{
        "object": "organization.usage.completions.result", "model": rows[0]["model"],
        "input_tokens": sum(r["input_tokens"] for r in rows), "output_tokens": sum(r["output_tokens"] for r in rows),
        "num_model_requests": len(rows)}]}]}
    (tmp_path / "buckets.json").write_text(json.dumps(bucket), encoding="utf-8")
    status, report = reconcile(platform, tenant.account_id, tmp_path / "buckets.json")
    assert status == 0 and report["provider_usage"]["mode"] == "bucket", report["gaps"]
    bucket["data"][0]["results"][0]["num_model_requests"] += 1
    (tmp_path / "buckets.json").write_text(json.dumps(bucket), encoding="utf-8")
    status, report = reconcile(platform, tenant.account_id, tmp_path / "buckets.json")
    assert status == 1 and [g["kind"] for g in report["gaps"]] == ["provider_requests_differ"]


def test_provider_usage_bad_usage_exits_2(platform: Platform, tmp_path: Path) -> None:
    dbs = ["--db", f"billing={platform.database_url('billing')}",
           "--db", f"metering={platform.database_url('metering')}"]
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,timestamp,input_tokens\nup_1,2026-12-01,many\n", encoding="utf-8")
    result = tollgate("reconcile", "--kafka", platform.bootstrap, *dbs, "--provider-usage", str(bad))
    assert result.returncode == 2 and "row 1: input_tokens is not a whole number" in result.stderr
    result = tollgate("reconcile", "--no-kafka", *dbs, "--provider-usage", str(bad))
    assert result.returncode == 2 and "--no-kafka" in result.stderr
    result = tollgate("reconcile", "--no-kafka", *dbs, "--provider", "openai")
    assert result.returncode == 2 and "go with --provider-usage" in result.stderr
