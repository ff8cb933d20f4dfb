"""The policy admin API against the REAL policy service (in-process, over gRPC, on a fresh SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from ingress_fakes import Fakes, admin, make_settings
from tollgate_ingress.api import create_app
from tollgate_ingress.deps import Deps
from tollgate_policy import PolicyApp
from tollgate_policy import Settings as PolicySettings

BASE = "/admin/v1/accounts/acct_1"


@pytest.fixture
async def policy(tmp_path: Path) -> AsyncIterator[PolicyApp]:
    running = PolicyApp(
        PolicySettings(database_url=f"sqlite:///{tmp_path / 'policy.db'}", grpc_host="127.0.0.1", grpc_port=0)
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def client(fakes: Fakes, broker: str, tmp_path: Path, policy: PolicyApp) -> AsyncIterator[httpx2.AsyncClient]:
    settings = make_settings(fakes, broker, tmp_path, policy_addr=policy.address)
    deps = await Deps.start(settings)
    application: Any = create_app(settings, deps)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(application), base_url="http://ingress") as c:
        yield c
    await application.state.services.shutdown(grace=5)


async def test_scopes_inherit_and_get_shows_where_each_rule_comes_from(client: httpx2.AsyncClient) -> None:
    account = {
        "rules": {"email": "redact", "payment_card": "block"},
        "routing": {"denied_providers": ["cheap"]},
        "when_found": [{"types": ["email"], "allowed_regions": ["eu"]}],
    }
    resp = await client.put(f"{BASE}/policy", json=account, headers=admin())
    assert resp.status_code == 200, resp.text
    assert (resp.json()["version"], resp.json()["kind"]) == (1, "enforced")
    resp = await client.put(f"{BASE}/teams/ml/policy", json={"rules": {"email": "flag"}}, headers=admin())
    assert resp.json()["version"] == 2
    resp = await client.put(
        f"{BASE}/keys/key_1/policy", json={"routing": {"allowed_models": ["gpt-4o-mini"]}}, headers=admin()
    )
    assert resp.json()["version"] == 3

    got = (await client.get(f"{BASE}/keys/key_1/policy?team=ml", headers=admin())).json()
    assert got["version"] == 3 and got["scope"] == "key:key_1"
    assert {r["detector"]: r["action"] for r in got["rules"]}["email"] == "flag"
    assert (got["sources"]["email"], got["sources"]["payment_card"], got["sources"]["secret"]) == (
        "team:ml",
        "account",
        "default",
    )
    assert got["routing"] == {"allowed_models": ["gpt-4o-mini"], "denied_providers": ["cheap"]}
    assert got["when_found"] == [{"types": ["email"], "allowed_regions": ["eu"]}]
    assert got["document"]["teams"] == {"ml": {"rules": {"email": "flag"}}}

    account_view = (await client.get(f"{BASE}/policy", headers=admin())).json()
    assert account_view["sources"]["email"] == "account" and account_view["scope"] == "account"


async def test_shadow_promote_discard_and_the_history(client: httpx2.AsyncClient) -> None:
    shadow = {"scope": "team:ml", "policy": {"rules": {"secret": "block"}}}
    resp = await client.post(f"{BASE}/policy/shadow", json=shadow, headers=admin())
    assert resp.status_code == 200, resp.text
    assert (resp.json()["kind"], resp.json()["version"]) == ("shadow", 1)
    assert resp.json()["document"]["teams"] == {"ml": {"rules": {"secret": "block"}}}
    got = (await client.get(f"{BASE}/teams/ml/policy", headers=admin())).json()
    assert got["shadow_version"] == 1 and got["version"] == 0  # still the default decides

    resp = await client.post(f"{BASE}/policy/shadow/promote", headers=admin())
    assert (resp.json()["kind"], resp.json()["version"]) == ("enforced", 2)
    got = (await client.get(f"{BASE}/teams/ml/policy", headers=admin())).json()
    assert got["sources"]["secret"] == "team:ml" and got["shadow_version"] is None

    await client.post(f"{BASE}/policy/shadow", json={"policy": {"rules": {"email": "block"}}}, headers=admin())
    resp = await client.post(f"{BASE}/policy/shadow/discard", headers=admin())
    assert (resp.json()["kind"], resp.json()["version"]) == ("discard", 4)
    resp = await client.post(f"{BASE}/policy/shadow/discard", headers=admin())
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_shadow_policy"

    history = (await client.get(f"{BASE}/policy/versions?limit=10", headers=admin())).json()
    assert [(v["version"], v["kind"]) for v in history["data"]] == [
        (4, "discard"),
        (3, "shadow"),
        (2, "enforced"),
        (1, "shadow"),
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("put", "/policy", {"rules": {"email": "nuke"}}, "invalid_rule"),
        ("put", "/teams/ml/policy", {"rules": {"passport": "block"}}, "unknown_detector"),
        ("put", "/keys/key_1/policy", {"routing": {"allowed_regions": "eu"}}, "invalid_argument"),
        ("post", "/policy/shadow", {"scope": "group:x", "policy": {}}, "invalid_argument"),
        ("put", "/policy", {"rules": [{"detector": "email", "action": "nuke"}]}, None),
    ],
)
async def test_bad_policies_are_openai_style_400s(
    client: httpx2.AsyncClient, method: str, path: str, body: dict[str, object], code: str | None
) -> None:
    resp = await client.request(method.upper(), f"{BASE}{path}", json=body, headers=admin())
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    versions = (await client.get(f"{BASE}/policy/versions", headers=admin())).json()
    assert versions["data"] == []


async def test_policy_admin_needs_the_admin_token(client: httpx2.AsyncClient) -> None:
    resp = await client.put(f"{BASE}/policy", json={"rules": {"email": "allow"}})
    assert resp.status_code == 401
    resp = await client.get(f"{BASE}/policy/versions", headers={"Authorization": "Bearer tg-not-admin"})
    assert resp.status_code == 401
