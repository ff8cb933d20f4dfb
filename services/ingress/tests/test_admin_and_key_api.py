"""Admin API, /v1/key, /v1/models and the operational endpoints, through the real app."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx2
from ingress_fakes import ADMIN_TOKEN, Fakes, admin, auth
from prometheus_client import generate_latest
from tollgate.policy.v1 import policy_service_pb2 as ppb


async def test_admin_requires_the_admin_token(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                    {"Authorization": ADMIN_TOKEN}):
        resp = await client.post("/admin/v1/accounts", json={"name": "x"}, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["type"] == "authentication_error"
        assert resp.headers["x-request-id"]
    assert fakes.billing.accounts == {}
    # An API key is not an admin token either.
    resp = await client.get("/admin/v1/accounts/acct_1/balance", headers=auth())
    assert resp.status_code == 401


async def test_account_key_credits_balance_ledger(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    resp = await client.post("/admin/v1/accounts", json={"name": "Acme", "id": "acct_acme", "currency": "eur"},
                             headers=admin())
    assert resp.status_code == 201, resp.text
    assert resp.json()["id"] == "acct_acme" and resp.json()["currency"] == "EUR"

    resp = await client.post(
        "/admin/v1/accounts/acct_acme/keys",
        json={"label": "ci", "limit": 0.1, "allowed_models": ["gpt-4o-mini"], "team": "t", "project": "p",
              "rate_limit_rpm": 60},
        headers=admin(),
    )
    assert resp.status_code == 201, resp.text
    key = resp.json()
    assert key["key"].startswith("tg-") and key["limit"] == "0.1" and key["limit_nanos"] == 100_000_000
    sent = fakes.billing.key_calls[-1]
    assert sent.has_limit and sent.limit_nanos == 100_000_000  # the JSON number 0.1, exactly one tenth
    assert list(sent.allowed_models) == ["gpt-4o-mini"] and sent.rate_limit_rpm == 60

    start = fakes.billing.balance_nanos
    credit = {"amount": "12.345678901", "idempotency_key": "pay-1"}
    resp = await client.post("/admin/v1/accounts/acct_acme/credits", json=credit, headers=admin())
    assert resp.status_code == 200, resp.text
    assert resp.json()["amount_nanos"] == 12_345_678_901 and resp.json()["amount"] == "12.345678901"
    assert resp.json()["replayed"] is False
    resp = await client.post("/admin/v1/accounts/acct_acme/credits", json=credit, headers=admin())
    assert resp.json()["replayed"] is True
    assert fakes.billing.balance_nanos == start + 12_345_678_901

    resp = await client.get("/admin/v1/accounts/acct_acme/balance", headers=admin())
    b = resp.json()
    assert b["balance_nanos"] == start + 12_345_678_901
    assert Decimal(b["balance"]) * 10**9 == b["balance_nanos"]
    assert (b["held"], b["held_nanos"]) == ("0.25", 250_000_000)
    assert b["available_nanos"] == b["balance_nanos"] - b["held_nanos"]

    resp = await client.get("/admin/v1/accounts/acct_acme/ledger", headers=admin())
    entries = resp.json()["entries"]
    assert [e["amount_nanos"] for e in entries] == [10**10, -(10**10)]
    assert entries[1]["amount"] == "-10"

    resp = await client.get("/admin/v1/accounts/acct_nope/balance", headers=admin())
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "account_not_found"


async def test_credit_amounts_are_validated(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    await client.post("/admin/v1/accounts", json={"name": "A", "id": "acct_a"}, headers=admin())
    bad = [
        {"amount": "1.0000000001", "idempotency_key": "k"},
        {"amount": "0", "idempotency_key": "k"},
        {"amount": -5, "idempotency_key": "k"},
        {"amount": "ten", "idempotency_key": "k"},
        {"amount": True, "idempotency_key": "k"},
        {"amount": "1e400", "idempotency_key": "k"},
        {"idempotency_key": "k"},
        {"amount": "5"},
        {"amount": "5", "idempotency_key": ""},
    ]
    for payload in bad:
        resp = await client.post("/admin/v1/accounts/acct_a/credits", json=payload, headers=admin())
        assert resp.status_code == 400, (payload, resp.text)
        assert resp.json()["error"]["param"] in ("amount", "idempotency_key")
    resp = await client.post("/admin/v1/accounts/acct_a/credits", content=b'{"amount": NaN, "idempotency_key": "k"}',
                             headers=admin())
    assert resp.status_code == 400
    resp = await client.post("/admin/v1/accounts/acct_a/credits", content=b"[1,", headers=admin())
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert fakes.billing.credit_calls == []


async def test_policy_round_trip(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    rules = {"rules": [{"detector": "payment_card", "action": "block"}, {"detector": "email", "action": "redact"}]}
    resp = await client.put("/admin/v1/accounts/acct_1/policy", json=rules, headers=admin())
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 1 and resp.json()["rules"] == rules["rules"]
    assert fakes.policy.policies["acct_1"].rules[0].action == ppb.ACTION_BLOCK
    resp = await client.get("/admin/v1/accounts/acct_1/policy", headers=admin())
    assert resp.json()["rules"] == rules["rules"]
    resp = await client.put("/admin/v1/accounts/acct_1/policy", json={"rules": [{"detector": "x", "action": "nuke"}]},
                            headers=admin())
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "rules[0].action"


async def test_key_info_renders_exact_decimal_numbers(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    fakes.billing.balance_nanos = 9_999_999_999_999_999  # beyond a float's 53-bit mantissa
    fakes.billing.usage_nanos = 1
    resp = await client.get("/v1/key", headers=auth())
    assert resp.status_code == 200
    assert b'"balance":9999999.999999999' in resp.content and b'"usage":0.000000001' in resp.content
    data = json.loads(resp.content, parse_float=Decimal)["data"]
    assert data["balance"] * 10**9 == 9_999_999_999_999_999
    assert data["limit"] is None and data["limit_remaining"] is None
    assert data["currency"] == "USD" and data["label"] == "default"

    fakes.billing.keys["tg-good-key-0123456789"].update(has_limit=True, limit_nanos=5 * 10**9)
    data = (await client.get("/v1/key", headers=auth())).json()["data"]
    assert data["limit"] == 5 and data["limit_remaining"] == 4.999999999


async def test_key_and_models_require_a_valid_key(client: httpx2.AsyncClient) -> None:
    for path in ("/v1/key", "/v1/models"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=auth("tg-unknown"))).status_code == 401


async def test_models_list_in_openai_shape(client: httpx2.AsyncClient) -> None:
    resp = await client.get("/v1/models", headers=auth())
    assert resp.json() == {"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"},
        {"id": "claude-3-5-haiku", "object": "model", "created": 0, "owned_by": "anthropic"},
    ]}


async def test_unknown_route_and_method_are_openai_errors(client: httpx2.AsyncClient) -> None:
    resp = await client.get("/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await client.get("/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["type"] == "invalid_request_error"


async def test_health_readiness_and_metrics(client: httpx2.AsyncClient, app: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                      headers=auth())
    for _ in range(100):  # channels connect and the producer starts in the background
        ready = await client.get("/readyz")
        if ready.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"grpc_channels": True, "kafka_producer": True}
    # /metrics is served on its own port (test_server.py), from this registry; the public port has none.
    assert (await client.get("/metrics")).status_code == 404
    text = generate_latest(app.state.services.deps.metrics.registry).decode()
    assert ('tollgate_ingress_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0'
            in text)
    assert 'tollgate_ingress_upstream_seconds_count{rpc="Complete",service="router"} 1.0' in text
