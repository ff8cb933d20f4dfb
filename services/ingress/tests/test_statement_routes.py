"""The refund, credit note, promotional credit and statement routes at ingress (fake billing behind the app): who
may call, what is refused before billing is asked, and what a credit's kind and expiry become on AddCredits.
The money itself is tested against real billing in tests/e2e/test_statements.py."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from ingress_fakes import Fakes, admin, auth, make_settings
from tollgate_ingress.api import create_app
from tollgate_ingress.deps import Deps
from tollgate_ingress.operators import parse_operators

TOKENS = {role: f"tgo-{role}-" + "t" * 32 for role in ("billing", "policy", "read-only")}
A = "acct_1"
REFUND = {"request_id": "req_1", "amount": "0.10", "reason": "upstream error", "idempotency_key": "ref-1"}
CREDIT_NOTE = {"period": "2026-11", "amount": "1", "reason": "goodwill", "idempotency_key": "cn-1"}


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
async def client(fakes: Fakes, broker: str, tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    operators = json.dumps([{"name": f"op-{role}", "role": role,
                             "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
                            for role, token in TOKENS.items()])
    settings = make_settings(fakes, broker, tmp_path, operators=parse_operators(operators))
    deps = await Deps.start(settings)
    app = create_app(settings, deps)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as c:
        yield c
    await app.state.services.shutdown(grace=5)


async def test_refunds_and_credit_notes_need_a_billing_operator(client: httpx2.AsyncClient) -> None:
    for path, body in (("refunds", REFUND), ("credit_notes", CREDIT_NOTE)):
        for headers, status, code in ((bearer("read-only"), 403, "insufficient_role"),
                                      (bearer("policy"), 403, "insufficient_role"),
                                      (auth(), 401, "invalid_admin_token")):  # an API key never moves money
            resp = await client.post(f"/admin/v1/accounts/{A}/{path}", json=body, headers=headers)
            assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), (path, resp.text)


async def test_refund_and_credit_note_bodies_are_checked_before_billing(client: httpx2.AsyncClient) -> None:
    cases = [
        ("refunds", {k: v for k, v in REFUND.items() if k != "reason"}, "reason"),
        ("refunds", {k: v for k, v in REFUND.items() if k != "idempotency_key"}, "idempotency_key"),
        ("refunds", {k: v for k, v in REFUND.items() if k != "amount"}, "amount"),
        ("refunds", {**REFUND, "amount": "-1"}, "amount"),
        ("refunds", {**REFUND, "amount": "0"}, "amount"),
        ("refunds", {**REFUND, "request_id": 5}, "request_id"),
        ("refunds", {**REFUND, "charge": "x"}, "charge"),
        ("credit_notes", {k: v for k, v in CREDIT_NOTE.items() if k != "period"}, "period"),
        ("credit_notes", {**CREDIT_NOTE, "reason": "   "}, "reason"),
        ("credit_notes", {**CREDIT_NOTE, "amount": "1e400"}, "amount"),
    ]
    for path, body, param in cases:
        resp = await client.post(f"/admin/v1/accounts/{A}/{path}", json=body, headers=bearer("billing"))
        assert resp.status_code == 400, (path, body, resp.text)
        assert resp.json()["error"]["param"] == param, (path, body, resp.text)


async def test_a_promotional_credit_carries_its_kind_and_expiry_to_billing(client: httpx2.AsyncClient,
                                                                           fakes: Fakes) -> None:
    assert (await client.post("/admin/v1/accounts", json={"name": "Acme", "id": A}, headers=admin())).status_code \
        == 201
    expires = int(time.time()) + 3600
    resp = await client.post(f"/admin/v1/accounts/{A}/credits", headers=bearer("billing"), json={
        "amount": "5", "idempotency_key": "promo-1", "kind": "promotional", "expires_at": expires})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["kind"], resp.json()["expires_at"]) == ("promotional", expires)
    sent = fakes.billing.credit_calls[-1]
    assert (sent.credit_kind, sent.expires_at_unix_ms, sent.amount_nanos) == ("promotional", expires * 1000, 5 * 10**9)
    paid = await client.post(f"/admin/v1/accounts/{A}/credits", headers=admin(),
                             json={"amount": "1", "idempotency_key": "pay-1"})
    assert (paid.json()["kind"], paid.json()["expires_at"]) == ("paid", None)
    assert (fakes.billing.credit_calls[-1].credit_kind, fakes.billing.credit_calls[-1].expires_at_unix_ms) == ("", 0)
    calls = len(fakes.billing.credit_calls)
    for body, param in (({"kind": "promotional"}, "expires_at"), ({"kind": "gift"}, "kind"),
                        ({"expires_at": expires}, "expires_at"),
                        ({"kind": "promotional", "expires_at": "tomorrow"}, "expires_at")):
        resp = await client.post(f"/admin/v1/accounts/{A}/credits", headers=admin(),
                                 json={"amount": "1", "idempotency_key": "x", **body})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (body, resp.text)
    assert len(fakes.billing.credit_calls) == calls  # nothing reached billing


async def test_statement_period_and_format_are_checked(client: httpx2.AsyncClient) -> None:
    for period, query, param in (("2026-13", "", "period"), ("2026-1", "", "period"), ("november", "", "period"),
                                 ("2026-11", "?format=xlsx", "format")):
        resp = await client.get(f"/admin/v1/accounts/{A}/statements/{period}{query}", headers=bearer("read-only"))
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (period, resp.text)


async def test_statements_are_for_operators_and_account_admin_keys_only(client: httpx2.AsyncClient) -> None:
    resp = await client.get(f"/admin/v1/accounts/{A}/statements/2026-11", headers=auth())
    assert (resp.status_code, resp.json()["error"]["code"]) == (401, "invalid_admin_token")
    resp = await client.get("/v1/statements/2026-11", headers=auth())  # the fake's key is no account admin
    assert (resp.status_code, resp.json()["error"]["code"]) == (403, "permission_denied")
    resp = await client.get("/v1/statements/2026-11", headers={"Authorization": "Bearer tg-unknown"})
    assert resp.status_code == 401
