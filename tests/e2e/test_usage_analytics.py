"""Usage analytics end to end (issue 13, "Usage analytics and statements"): calls through the real platform, then
the admin report (``GET /admin/v1/accounts/{id}/usage``) and the key's own report (``GET /v1/usage``) read back
from metering's rated usage, on SQLite and on PostgreSQL.

The figures are checked against what billing charged (the balance) and against each other (upstream cost +
margin = resale price), never against constants the report itself produced.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["platform", "pg_platform"])
def any_platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield request.getfixturevalue(request.param)


def _chat(platform: Platform, key: str, model: str, tags: str) -> None:
    resp = httpx.post(f"{platform.ingress_url}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}", "X-Tollgate-Tags": tags},
                      json={"model": model, "max_tokens": 12, "messages": [{"role": "user", "content": "Hi there"}]})
    assert resp.status_code == 200, resp.text


def _get(platform: Platform, path: str, token: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{platform.ingress_url}{path}", params=params, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})


def test_the_usage_report_sums_what_was_charged_by_the_groups_asked(any_platform: Platform) -> None:
    platform = any_platform
    admin = platform.config.admin_token
    tenant = Tenant.create(platform)
    second = str(platform.admin("POST", f"/admin/v1/accounts/{tenant.account_id}/keys", {"label": "two"})["key"])
    _chat(platform, tenant.api_key, "gpt-4o-mini", "feature=chat")
    _chat(platform, tenant.api_key, "gpt-4o-mini", "feature=search")
    _chat(platform, second, "claude-3-5-haiku", "feature=chat")
    charged = 10 * NANOS - tenant.settle()["balance_nanos"]
    path = f"/admin/v1/accounts/{tenant.account_id}/usage"

    total = _get(platform, path, admin)
    assert total.status_code == 200, total.text
    [row] = total.json()["data"]
    assert (row["requests"], row["currency"]) == (3, "USD")
    assert row["resale_price_nanos"] == charged > 0
    assert row["upstream_cost_nanos"] + row["margin_nanos"] == row["resale_price_nanos"]
    assert row["upstream_cost_nanos"] > 0 and row["margin_nanos"] > 0
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0

    by = _get(platform, path, admin, group_by="model,tag:feature").json()
    assert [(r["model"], r["tag"], r["requests"]) for r in by["data"]] == [
        ("claude-3-5-haiku", "chat", 1), ("gpt-4o-mini", "chat", 1), ("gpt-4o-mini", "search", 1)]
    assert sum(r["resale_price_nanos"] for r in by["data"]) == charged
    by_key = _get(platform, path, admin, group_by="key,day").json()["data"]
    assert sorted(r["requests"] for r in by_key) == [1, 2] and all(r["day"] for r in by_key)

    first = _get(platform, path, admin, group_by="model", limit=1).json()
    assert first["has_more"] and first["next_page_token"]
    rest = _get(platform, path, admin, group_by="model", limit=1, page_token=first["next_page_token"]).json()
    assert [r["model"] for r in first["data"] + rest["data"]] == ["claude-3-5-haiku", "gpt-4o-mini"]
    assert not rest["has_more"] and rest["next_page_token"] is None

    exported = _get(platform, path, admin, group_by="model", format="csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["model"], int(r["requests"])) for r in lines] == [("claude-3-5-haiku", 1), ("gpt-4o-mini", 2)]
    assert sum(int(r["resale_price_nanos"]) for r in lines) == charged

    # The key's own view: only its usage, what it was charged, never the operator's cost or margin.
    mine = _get(platform, "/v1/usage", second, group_by="model")
    assert mine.status_code == 200, mine.text
    [own] = mine.json()["data"]
    assert (own["model"], own["requests"]) == ("claude-3-5-haiku", 1)
    assert own["cost_nanos"] == next(r["resale_price_nanos"] for r in by["data"] if r["model"] == "claude-3-5-haiku")
    assert "upstream_cost_nanos" not in own and "margin_nanos" not in own

    # A window that holds none of it, then bad input: OpenAI-style errors, never a 500.
    assert _get(platform, path, admin, to="2020-01-01").json()["data"] == []
    for params, param in (({"group_by": "colour"}, None), ({"from": "yesterday"}, "from"), ({"limit": "0"}, "limit"),
                          ({"page_token": "not-ours"}, None), ({"format": "xml"}, "format"),
                          ({"from": "2026-12-02", "to": "2026-12-01"}, "from"), ({"limit": "²"}, "limit"),
                          ({"from": "99999999999999999999"}, "from")):
        bad = _get(platform, path, admin, **params)
        assert bad.status_code == 400, (params, bad.text)
        assert bad.json()["error"]["type"] == "invalid_request_error"
        if param:
            assert bad.json()["error"]["param"] == param
    # An account id no file name can hold (header values are latin-1): the CSV still answers, never a 500.
    odd = _get(platform, "/admin/v1/accounts/\u00e9t\u00e9\u2603\"x/usage", admin, format="csv")
    assert odd.status_code == 200 and odd.headers["content-disposition"] == 'attachment; filename="usage-_t___x.csv"'
    assert _get(platform, path, tenant.api_key).status_code == 403  # not an account admin key
    assert _get(platform, path, "tga-wrong").status_code == 401
    assert _get(platform, "/v1/usage", "tg-not-a-key").status_code == 401


def test_the_ledger_pages_with_a_cursor_to_the_first_entry(any_platform: Platform) -> None:
    """The ledger API used to stop at 1,000 entries; it now pages with a cursor (issue 13, statements)."""
    platform = any_platform
    admin = platform.config.admin_token
    tenant = Tenant.create(platform)
    for i in range(3):
        _chat(platform, tenant.api_key, "gpt-4o-mini", f"n={i}")
    tenant.settle()
    path = f"/admin/v1/accounts/{tenant.account_id}/ledger"
    everything = _get(platform, path, admin).json()
    assert len(everything["entries"]) == 8 and not everything["has_more"]  # a credit and 3 charges, 2 legs each

    pages, token = [], None
    while True:
        page = _get(platform, path, admin, limit=3, **({"page_token": token} if token else {})).json()
        pages.append(page["entries"])
        token = page["next_page_token"]
        assert page["has_more"] == (token is not None)
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [e for p in pages for e in p] == everything["entries"]
    assert pages[-1][-1]["kind"] == "credit_purchase"  # down to the first credit
    bad = _get(platform, path, admin, page_token="bm90LW91cnM")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
