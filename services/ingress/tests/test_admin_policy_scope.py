"""Who may manage an account's DLP policy through the admin API: the operator, or an ``account_admin`` API key of
that account. Against the REAL billing service (keys and GetKeyInfo) and the REAL policy service, both in-process
over gRPC on fresh SQLite files; the router stays the fake (no chat request is made).

Decided here: the operator-only routes (accounts, credits, balance, ledger) take the admin token and nothing else,
so an account admin's key gets 401 ``invalid_admin_token`` there, as any non-operator credential does. (An account
admin manages its own account's keys: test_admin_keys.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from ingress_fakes import Fakes, admin, auth, make_settings
from tollgate_billing.app import BillingApp
from tollgate_billing.config import Settings as BillingSettings
from tollgate_ingress.api import create_app
from tollgate_ingress.deps import Deps
from tollgate_policy import PolicyApp
from tollgate_policy import Settings as PolicySettings

A, B = "acct_a", "acct_b"
RULES = {"rules": {"email": "redact"}}


@pytest.fixture
async def policy(tmp_path: Path) -> AsyncIterator[PolicyApp]:
    running = PolicyApp(
        PolicySettings(database_url=f"sqlite:///{tmp_path / 'policy.db'}", grpc_host="127.0.0.1", grpc_port=0)
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[BillingApp]:
    # No metering: the price book only matters to Authorize, which these tests never call.
    running = BillingApp(
        BillingSettings(database_url=f"sqlite:///{tmp_path / 'billing.db'}", grpc_host="127.0.0.1", grpc_port=0,
                        kafka_bootstrap_servers=None, metering_addr="127.0.0.1:1", hold_sweep_seconds=3600)
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def client(
    fakes: Fakes, broker: str, tmp_path: Path, policy: PolicyApp, billing: BillingApp
) -> AsyncIterator[httpx2.AsyncClient]:
    settings = make_settings(fakes, broker, tmp_path, policy_addr=policy.address, billing_addr=billing.address)
    deps = await Deps.start(settings)
    application: Any = create_app(settings, deps)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(application), base_url="http://ingress") as c:
        yield c
    await application.state.services.shutdown(grace=5)


async def _key(client: httpx2.AsyncClient, account_id: str, **body: object) -> str:
    resp = await client.post(f"/admin/v1/accounts/{account_id}/keys", json=body, headers=admin())
    assert resp.status_code == 201, resp.text
    assert resp.json()["account_admin"] is bool(body.get("account_admin", False))
    key: str = resp.json()["key"]
    return key


@pytest.fixture
async def keys(client: httpx2.AsyncClient) -> dict[str, str]:
    for account_id in (A, B):
        resp = await client.post("/admin/v1/accounts", json={"name": account_id, "id": account_id}, headers=admin())
        assert resp.status_code == 201, resp.text
    return {
        "admin_a": await _key(client, A, account_admin=True),
        "plain_a": await _key(client, A),
        "admin_b": await _key(client, B, account_admin=True),
    }


def _error(resp: httpx2.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


async def test_an_account_admin_manages_its_own_accounts_policy_and_nothing_else(
    client: httpx2.AsyncClient, keys: dict[str, str]
) -> None:
    me = auth(keys["admin_a"])
    resp = await client.put(f"/admin/v1/accounts/{A}/policy", json=RULES, headers=me)
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 1
    got = await client.get(f"/admin/v1/accounts/{A}/policy", headers=me)
    assert {r["detector"]: r["action"] for r in got.json()["rules"]}["email"] == "redact"
    resp = await client.put(f"/admin/v1/accounts/{A}/teams/ml/policy", json={"rules": {"email": "flag"}}, headers=me)
    assert resp.json()["version"] == 2
    resp = await client.post(f"/admin/v1/accounts/{A}/policy/shadow", json={"policy": RULES}, headers=me)
    assert resp.json()["kind"] == "shadow"
    assert (await client.post(f"/admin/v1/accounts/{A}/policy/shadow/discard", headers=me)).status_code == 200
    versions = await client.get(f"/admin/v1/accounts/{A}/policy/versions", headers=me)
    assert {1, 2, 3} <= {v["version"] for v in versions.json()["data"]}

    # Another account's policy: 403 for every policy route, and B's policy is untouched.
    for method, path in [
        ("GET", "policy"), ("PUT", "policy"), ("PUT", "teams/ml/policy"), ("GET", "keys/key_1/policy"),
        ("POST", "policy/shadow"), ("POST", "policy/shadow/promote"), ("GET", "policy/versions"),
    ]:
        resp = await client.request(method, f"/admin/v1/accounts/{B}/{path}", json=RULES, headers=me)
        _error(resp, 403, "permission_denied")
    b_view = await client.get(f"/admin/v1/accounts/{B}/policy", headers=auth(keys["admin_b"]))
    assert b_view.status_code == 200 and b_view.json()["version"] == 0


async def test_keys_that_are_not_admins_of_the_account_are_refused(
    client: httpx2.AsyncClient, keys: dict[str, str]
) -> None:
    resp = await client.put(f"/admin/v1/accounts/{A}/policy", json=RULES, headers=auth(keys["plain_a"]))
    _error(resp, 403, "permission_denied")
    _error(await client.get(f"/admin/v1/accounts/{A}/policy", headers=auth(keys["plain_a"])), 403, "permission_denied")
    _error(await client.get(f"/admin/v1/accounts/{A}/policy", headers=auth("tg-not-a-key")), 401, "invalid_api_key")
    _error(await client.get(f"/admin/v1/accounts/{A}/policy"), 401, "invalid_admin_token")
    resp = await client.get(f"/admin/v1/accounts/{A}/policy", headers={"Authorization": "Basic abc"})
    _error(resp, 401, "invalid_admin_token")
    # nothing above changed A's policy; the operator token still works on it
    resp = await client.put(f"/admin/v1/accounts/{A}/policy", json=RULES, headers=admin())
    assert resp.status_code == 200 and resp.json()["version"] == 1


async def test_operator_routes_take_the_admin_token_only(client: httpx2.AsyncClient, keys: dict[str, str]) -> None:
    me = auth(keys["admin_a"])
    for method, path, body in [
        ("POST", f"/admin/v1/accounts/{A}/credits", {"amount": "5", "idempotency_key": "k1"}),
        ("GET", f"/admin/v1/accounts/{A}/balance", None),
        ("GET", f"/admin/v1/accounts/{A}/ledger", None),
        ("POST", "/admin/v1/accounts", {"name": "mine"}),
    ]:
        _error(await client.request(method, path, json=body, headers=me), 401, "invalid_admin_token")
    balance = await client.get(f"/admin/v1/accounts/{A}/balance", headers=admin())
    assert balance.status_code == 200 and balance.json()["balance_nanos"] == 0  # the refused credit did nothing
    resp = await client.post(f"/admin/v1/accounts/{A}/keys", json={"account_admin": "yes"}, headers=admin())
    _error(resp, 400, "invalid_type")


async def test_a_key_scope_must_name_a_key_of_the_paths_account(
    client: httpx2.AsyncClient, keys: dict[str, str]
) -> None:
    """Issue 13: a policy write for a key id of another account (or an unknown one) was filed into this account's
    document. Refused now, by the operator as by the account's admin, and nothing is written."""
    listed = await client.get(f"/admin/v1/accounts/{B}/keys", headers=admin())
    b_key = listed.json()["data"][0]["id"]
    a_keys = (await client.get(f"/admin/v1/accounts/{A}/keys", headers=admin())).json()["data"]
    a_key = a_keys[0]["id"]
    for credential in (admin(), auth(keys["admin_a"])):
        for key_id in (b_key, "key_nobody_has"):
            resp = await client.put(f"/admin/v1/accounts/{A}/keys/{key_id}/policy", json=RULES, headers=credential)
            _error(resp, 404, "key_not_found")
            resp = await client.post(f"/admin/v1/accounts/{A}/policy/shadow",
                                     json={"scope": f"key:{key_id}", "policy": RULES}, headers=credential)
            _error(resp, 400, "unknown_key")
    versions = await client.get(f"/admin/v1/accounts/{A}/policy/versions", headers=admin())
    assert versions.json()["data"] == []
    # A key of the account itself is a scope like any other.
    resp = await client.put(f"/admin/v1/accounts/{A}/keys/{a_key}/policy", json=RULES, headers=auth(keys["admin_a"]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 1
    got = await client.get(f"/admin/v1/accounts/{A}/keys/{a_key}/policy", headers=admin())
    assert got.json()["scope"] == f"key:{a_key}"
