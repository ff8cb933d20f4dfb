"""Budgets through real processes: the admin API creates, lists, updates and deletes a team budget (as the operator
and as the account's own admin key), the real billing refuses a chat request the budget cannot cover with 402
``budget_exceeded`` naming it before the upstream is called, ``/v1/key`` shows the tightest limit, and the billing
log, rebuilt, equals the live budgets."""

from __future__ import annotations

import httpx
import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import Tenant, mock_calls
from .test_request_path import check_rebuilds_equal_live

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def _call(platform: Platform, method: str, path: str, token: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{platform.ingress_url}{path}", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def test_a_team_budget_refuses_before_the_upstream_and_is_managed_by_the_accounts_admin(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    base = f"/admin/v1/accounts/{tenant.account_id}"
    platform.admin("POST", f"{base}/teams", {"id": "ml", "name": "ML"})
    member = platform.admin("POST", f"{base}/keys", {"team": "ml", "label": "member"})
    admin_key = str(platform.admin("POST", f"{base}/keys", {"account_admin": True, "label": "admin"})["key"])
    stranger = Tenant.create(platform, label="stranger")

    # the account's own admin key manages its budgets; another account's key may not
    created = _call(platform, "POST", f"{base}/budgets", admin_key,
                    {"scope": "team", "scope_id": "ml", "period": "monthly", "limit": "0"})
    assert created.status_code == 201, created.text
    budget = created.json()
    assert (budget["object"], budget["scope"], budget["scope_id"], budget["period"], budget["limit_nanos"],
            budget["time_zone"]) == ("budget", "team", "ml", "monthly", 0, "UTC")
    assert _call(platform, "GET", f"{base}/budgets", stranger.api_key).status_code in (401, 403)
    again = _call(platform, "POST", f"{base}/budgets", admin_key,
                  {"scope": "team", "scope_id": "ml", "period": "monthly", "limit": "1"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "budget_exists"
    for bad, param in (({"scope": "galaxy", "scope_id": "x", "period": "daily", "limit": "1"}, "scope"),
                       ({"scope": "team", "scope_id": "ml", "period": "hourly", "limit": "1"}, "period"),
                       ({"scope": "team", "scope_id": "ml", "period": "daily", "limit": "-1"}, "limit"),
                       ({"scope": "team", "scope_id": "ml", "period": "daily"}, "limit")):
        refused = _call(platform, "POST", f"{base}/budgets", admin_key, bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    missing = _call(platform, "POST", f"{base}/budgets", admin_key,
                    {"scope": "team", "scope_id": "ghost", "period": "daily", "limit": "1"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "team_not_found"
    unknown = _call(platform, "GET", f"{base}/budgets/bud_ghost", admin_key)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "budget_not_found"

    # a $0 budget: refused with 402 naming the budget, and the upstream never saw it
    before = len(mock_calls(platform))
    client = openai.OpenAI(base_url=f"{platform.ingress_url}/v1", api_key=str(member["key"]), max_retries=0,
                           timeout=30)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert caught.value.status_code == 402
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "budget_exceeded"
    assert budget["id"] in error["message"] and "team 'ml'" in error["message"]
    assert len(mock_calls(platform)) == before
    Tenant(platform, tenant.account_id, admin_key).client().chat.completions.create(**BODY)  # not in the team

    raised = _call(platform, "PATCH", f"{base}/budgets/{budget['id']}", admin_key, {"limit": "1.00"})
    assert raised.status_code == 200 and raised.json()["limit_nanos"] == 10**9
    assert _call(platform, "PATCH", f"{base}/budgets/{budget['id']}", admin_key,
                 {"period": "daily"}).status_code == 400
    client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    tenant.settle()
    spent = platform.admin("GET", f"{base}/budgets/{budget['id']}")
    assert spent["held_nanos"] == 0 and int(spent["spent_nanos"]) > 0  # type: ignore[call-overload]

    # /v1/key: the team budget is the member's tightest limit
    key = _call(platform, "GET", "/v1/key", str(member["key"])).json()["data"]
    tight = key["tightest_limit"]
    assert (tight["scope"], tight["scope_id"], tight["budget_id"], tight["period"]) == (
        "team", "ml", budget["id"], "monthly")
    assert round(key["limit"] * 10**9) == 10**9
    assert round(key["limit_remaining"] * 10**9) == 10**9 - int(spent["spent_nanos"])  # type: ignore[call-overload]
    assert tight["resets_at"] > 0

    # exactly what it spent: nothing is left, the next request is refused
    _call(platform, "PATCH", f"{base}/budgets/{budget['id']}", admin_key, {"limit": str(spent["spent"])})
    with pytest.raises(openai.APIStatusError) as exhausted:
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert exhausted.value.status_code == 402
    listed = platform.admin("GET", f"{base}/budgets")["data"]
    assert [b["id"] for b in listed] == [budget["id"]]  # type: ignore[index]
    gone = _call(platform, "DELETE", f"{base}/budgets/{budget['id']}", admin_key)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    tenant.settle()
    check_rebuilds_equal_live(platform, "budgets")
