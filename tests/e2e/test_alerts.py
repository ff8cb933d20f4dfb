"""Alerts through real processes: a key's budget with alert thresholds and the account's balance alert, set over
the admin API (by the account's own admin key); real chat requests, rated by metering and captured by billing,
cross them; the budget's GET shows the last threshold crossed, the balance alert shows low until a credit restores
it, bad settings are 400s naming the field, and the billing log, rebuilt, equals the live rows."""

from __future__ import annotations

import httpx
import pytest
from tollgate_dev.platform import Platform

from .tenant import Tenant, dollars
from .test_request_path import check_rebuilds_equal_live

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def _call(platform: Platform, method: str, path: str, token: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{platform.ingress_url}{path}", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def test_budget_thresholds_and_the_balance_alert_are_crossed_by_real_captures(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    base = f"/admin/v1/accounts/{tenant.account_id}"
    admin_key = str(platform.admin("POST", f"{base}/keys", {"account_admin": True, "label": "admin"})["key"])
    key_id = next(k["id"] for k in platform.admin("GET", f"{base}/keys")["data"]  # type: ignore[attr-defined]
                  if k["label"] == "e2e")
    client = tenant.client()

    client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    cost = 10 * 10**9 - tenant.settle()["balance_nanos"]  # what one such request costs
    assert cost > 0

    created = _call(platform, "POST", f"{base}/budgets", admin_key, {
        "scope": "key", "scope_id": key_id, "period": "total", "limit": format(dollars(2 * cost), "f"),
        "alert_thresholds": [100, 50]})
    assert created.status_code == 201, created.text
    budget = created.json()
    assert (budget["alert_thresholds"], budget["last_crossed"]) == ([50, 100], None)
    balance = tenant.balance()["balance_nanos"]
    alert = _call(platform, "PUT", f"{base}/balance_alert", admin_key,
                  {"threshold": format(dollars(balance - cost // 2), "f")})
    assert alert.status_code == 200, alert.text
    assert (alert.json()["object"], alert.json()["low"], alert.json()["threshold_nanos"]) == (
        "balance_alert", False, balance - cost // 2)

    client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    tenant.settle()
    shown = platform.admin("GET", f"{base}/budgets/{budget['id']}")
    assert shown["spent_nanos"] == cost
    crossed = shown["last_crossed"]
    assert isinstance(crossed, dict) and crossed["percent"] == 50 and crossed["at"] > 0
    low = _call(platform, "GET", f"{base}/balance_alert", admin_key).json()
    assert low["low"] is True and low["last_low_at"] > 0

    # a lower limit: the spend is at 100 % of it at once
    lowered = _call(platform, "PATCH", f"{base}/budgets/{budget['id']}", admin_key,
                    {"limit": format(dollars(cost), "f")})
    assert lowered.status_code == 200 and lowered.json()["last_crossed"]["percent"] == 100, lowered.text
    only = _call(platform, "PATCH", f"{base}/budgets/{budget['id']}", admin_key, {"alert_thresholds": [90]})
    assert only.status_code == 200 and only.json()["alert_thresholds"] == [90]
    assert only.json()["limit_nanos"] == cost

    platform.admin("POST", f"{base}/credits", {"amount": "1.00", "idempotency_key": f"top-{tenant.account_id}"})
    assert _call(platform, "GET", f"{base}/balance_alert", admin_key).json()["low"] is False

    for method, path, body, param in (
        ("POST", "budgets", {"scope": "account", "period": "daily", "limit": "1", "alert_thresholds": [0]},
         "alert_thresholds"),
        ("PATCH", f"budgets/{budget['id']}", {"alert_thresholds": "50"}, "alert_thresholds"),
        ("PATCH", f"budgets/{budget['id']}", {}, "limit"),
        ("PUT", "balance_alert", {"threshold": "-1"}, "threshold"),
        ("PUT", "balance_alert", {}, "threshold"),
        ("PUT", "balance_alert", {"threshold": "1", "email": "x"}, "email"),
    ):
        refused = _call(platform, method, f"{base}/{path}", admin_key, body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    stranger = Tenant.create(platform, label="stranger")
    assert _call(platform, "GET", f"{base}/balance_alert", stranger.api_key).status_code in (401, 403)
    ghost = _call(platform, "GET", "/admin/v1/accounts/acct_ghost/balance_alert", platform.config.admin_token)
    assert ghost.status_code == 404 and ghost.json()["error"]["code"] == "account_not_found"
    check_rebuilds_equal_live(platform, "alerts")
