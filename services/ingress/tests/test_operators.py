"""Named operator tokens with roles: each admin route's gate, through the real app (fake billing behind it)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from ingress_fakes import Fakes, admin, make_settings
from tollgate_common.config import ConfigError
from tollgate_ingress.api import create_app
from tollgate_ingress.config import Settings
from tollgate_ingress.deps import Deps
from tollgate_ingress.operators import Role, parse_operators

TOKENS = {role: f"tgo-{role}-" + "s" * 32 for role in ("owner", "billing", "policy", "read-only")}


def _operators_json() -> str:
    return json.dumps([
        {"name": f"op-{role}", "role": role, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
        for role, token in TOKENS.items()
    ])


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
async def client(fakes: Fakes, broker: str, tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    settings = make_settings(fakes, broker, tmp_path, operators=parse_operators(_operators_json()))
    deps = await Deps.start(settings)
    app = create_app(settings, deps)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as c:
        yield c
    await app.state.services.shutdown(grace=5)


async def _create_account(client: httpx2.AsyncClient, headers: dict[str, str], account_id: str) -> httpx2.Response:
    return await client.post("/admin/v1/accounts", json={"name": "Acme", "id": account_id}, headers=headers)


async def test_roles_gate_writes_and_every_role_reads(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    for role in ("owner", "billing"):
        resp = await _create_account(client, bearer(role), f"acct_{role}")
        assert resp.status_code == 201, (role, resp.text)
    for role in ("policy", "read-only"):
        resp = await _create_account(client, bearer(role), f"acct_{role.replace('-', '_')}")
        assert resp.status_code == 403, role
        assert resp.json()["error"] == {
            "message": f"Operator role '{role}' may not change billing settings.", "type": "permission_error",
            "code": "insufficient_role", "param": None}
    assert set(fakes.billing.accounts) == {"acct_owner", "acct_billing"}

    credit = {"amount": "1", "idempotency_key": "pay-1"}
    assert (await client.post("/admin/v1/accounts/acct_owner/credits", json=credit,
                              headers=bearer("read-only"))).status_code == 403
    assert (await client.post("/admin/v1/accounts/acct_owner/credits", json=credit,
                              headers=bearer("billing"))).status_code == 200
    for role in TOKENS:
        for path in ("/admin/v1/accounts/acct_owner/balance", "/admin/v1/accounts/acct_owner/ledger",
                     "/admin/v1/accounts/acct_owner/policy"):
            resp = await client.get(path, headers=bearer(role))
            assert resp.status_code == 200, (role, path, resp.text)


async def test_policy_writes_need_the_policy_role(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    doc = {"rules": [{"detector": "email", "action": "redact"}]}
    for role, status in (("billing", 403), ("read-only", 403), ("policy", 200), ("owner", 200)):
        resp = await client.put("/admin/v1/accounts/acct_1/policy", json=doc, headers=bearer(role))
        assert resp.status_code == status, (role, resp.text)
        if status == 403:
            assert resp.json()["error"]["code"] == "insufficient_role"


async def test_keys_need_billing_and_account_admins_need_a_billing_operator(client: httpx2.AsyncClient) -> None:
    await _create_account(client, admin(), "acct_k")
    for role, status in (("policy", 403), ("read-only", 403), ("billing", 201)):
        resp = await client.post("/admin/v1/accounts/acct_k/keys", json={"label": "x"}, headers=bearer(role))
        assert resp.status_code == status, (role, resp.text)
    resp = await client.post("/admin/v1/accounts/acct_k/keys", json={"label": "a", "account_admin": True},
                             headers=bearer("billing"))
    assert resp.status_code == 201, resp.text
    key_id = resp.json()["id"]
    resp = await client.get(f"/admin/v1/accounts/acct_k/keys/{key_id}", headers=bearer("read-only"))
    assert resp.status_code == 200, resp.text


async def test_unknown_operator_token_is_401(client: httpx2.AsyncClient) -> None:
    resp = await client.get("/admin/v1/accounts/acct_1/balance", headers={"Authorization": "Bearer tgo-nobody"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_admin_token"


def test_settings_read_and_check_operators() -> None:
    env = {"INGRESS_ADMIN_TOKEN": "a" * 40, "INGRESS_OPERATORS": _operators_json()}
    settings = Settings.from_env(env)
    assert {op.name: op.role for op in settings.operators.values()} == {
        "op-owner": Role.OWNER, "op-billing": Role.BILLING, "op-policy": Role.POLICY, "op-read-only": Role.READ_ONLY}
    bad: list[Any] = [
        "not json",
        {"name": "x"},
        [{"name": "x", "role": "god", "token_sha256": "0" * 64}],
        [{"name": "x", "role": "owner", "token_sha256": "abc"}],
        [{"name": "admin-token", "role": "owner", "token_sha256": "0" * 64}],
        [{"name": "x", "role": "owner", "token_sha256": "0" * 64}, {"name": "y", "role": "owner",
                                                                       "token_sha256": "0" * 64}],
        [{"name": "x", "role": "owner", "token_sha256": "0" * 64, "token": "plain"}],
    ]
    for value in bad:
        text = value if isinstance(value, str) else json.dumps(value)
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**env, "INGRESS_OPERATORS": text})
        assert "INGRESS_OPERATORS" in str(caught.value) and "plain" not in str(caught.value)
