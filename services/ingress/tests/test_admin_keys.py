"""The admin API's key lifecycle (list, get, update, revoke, rotate, expiry) and who may use it, against the REAL
billing service (in-process over gRPC, fresh SQLite file) behind the real ingress app. The router and policy stay the
fakes: no chat request is made here (tests/e2e/test_key_lifecycle.py sends real ones)."""

from __future__ import annotations

import asyncio
import time
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

A, B = "acct_keys_a", "acct_keys_b"


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[BillingApp]:
    running = BillingApp(
        BillingSettings(database_url=f"sqlite:///{tmp_path / 'billing.db'}", grpc_host="127.0.0.1", grpc_port=0,
                        kafka_bootstrap_servers=None, metering_addr="127.0.0.1:1", hold_sweep_seconds=3600)
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def client(
    fakes: Fakes, broker: str, tmp_path: Path, billing: BillingApp
) -> AsyncIterator[httpx2.AsyncClient]:
    settings = make_settings(fakes, broker, tmp_path, billing_addr=billing.address)
    deps = await Deps.start(settings)
    application: Any = create_app(settings, deps)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(application), base_url="http://ingress") as c:
        for account_id in (A, B):
            resp = await c.post("/admin/v1/accounts", json={"name": account_id, "id": account_id}, headers=admin())
            assert resp.status_code == 201, resp.text
        yield c
    await application.state.services.shutdown(grace=5)


async def _create(client: httpx2.AsyncClient, account_id: str, headers: dict[str, str] | None = None,
                  **body: object) -> dict[str, Any]:
    resp = await client.post(f"/admin/v1/accounts/{account_id}/keys", json=body, headers=headers or admin())
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


def _error(resp: httpx2.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


async def _works(client: httpx2.AsyncClient, secret: str) -> bool:
    """A request with the key (GET /v1/key): True when it is accepted, False on 401."""
    resp = await client.get("/v1/key", headers=auth(secret))
    assert resp.status_code in (200, 401), resp.text
    return resp.status_code == 200


async def test_list_get_update_revoke_and_the_revoked_key_is_401(client: httpx2.AsyncClient) -> None:
    created = await _create(client, A, label="ci", allowed_models=["gpt-4o-mini"])
    other = await _create(client, A, label="batch")
    listed = (await client.get(f"/admin/v1/accounts/{A}/keys", headers=admin())).json()
    assert [k["id"] for k in listed["data"]] == [created["id"], other["id"]]
    assert all("key" not in k for k in listed["data"])  # never the secret
    assert created["key"] not in str(listed) and other["key"] not in str(listed)
    got = (await client.get(f"/admin/v1/accounts/{A}/keys/{created['id']}", headers=admin())).json()
    assert (got["label"], got["status"], got["prefix"], got["allowed_models"]) == (
        "ci", "active", created["prefix"], ["gpt-4o-mini"])

    resp = await client.patch(f"/admin/v1/accounts/{A}/keys/{created['id']}",
                              json={"label": "ci-2", "allowed_models": []}, headers=admin())
    assert resp.status_code == 200, resp.text
    assert (resp.json()["label"], resp.json()["allowed_models"]) == ("ci-2", [])
    _error(await client.patch(f"/admin/v1/accounts/{A}/keys/{created['id']}", json={"limit": "5"}, headers=admin()),
           400, "unknown_parameter")

    assert await _works(client, created["key"])
    resp = await client.delete(f"/admin/v1/accounts/{A}/keys/{created['id']}", headers=admin())
    assert resp.status_code == 200 and resp.json()["status"] == "revoked" and resp.json()["revoked_at"]
    _error(await client.get("/v1/key", headers=auth(created["key"])), 401, "api_key_revoked")
    again = await client.delete(f"/admin/v1/accounts/{A}/keys/{created['id']}", headers=admin())
    assert again.status_code == 200 and again.json()["revoked_at"] == resp.json()["revoked_at"]
    _error(await client.patch(f"/admin/v1/accounts/{A}/keys/{created['id']}", json={"label": "x"}, headers=admin()),
           409, "key_revoked")
    listed = (await client.get(f"/admin/v1/accounts/{A}/keys", headers=admin())).json()
    assert [k["id"] for k in listed["data"]] == [other["id"]]
    listed = (await client.get(f"/admin/v1/accounts/{A}/keys?include_revoked=true", headers=admin())).json()
    assert {k["id"] for k in listed["data"]} == {created["id"], other["id"]}
    assert await _works(client, other["key"])

    _error(await client.get(f"/admin/v1/accounts/{A}/keys/key_nope", headers=admin()), 404, "key_not_found")
    _error(await client.get(f"/admin/v1/accounts/{B}/keys/{other['id']}", headers=admin()), 404, "key_not_found")
    _error(await client.get("/admin/v1/accounts/acct_nope/keys", headers=admin()), 404, "account_not_found")


async def test_rotation_shows_the_new_secret_once_and_the_old_one_works_during_the_grace(
    client: httpx2.AsyncClient,
) -> None:
    created = await _create(client, A, label="svc")
    resp = await client.post(f"/admin/v1/accounts/{A}/keys/{created['id']}/rotate", json={"grace_seconds": 3600},
                             headers=admin())
    assert resp.status_code == 200, resp.text
    rotated = resp.json()
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert rotated["prefix"] == rotated["key"][:12]
    assert rotated["previous_key"]["prefix"] == created["prefix"]
    assert rotated["previous_key"]["valid_until"] >= int(time.time()) + 3590
    assert await _works(client, rotated["key"]) and await _works(client, created["key"])
    got = (await client.get(f"/admin/v1/accounts/{A}/keys/{created['id']}", headers=admin())).json()
    assert "key" not in got and got["prefix"] == rotated["prefix"]

    resp = await client.post(f"/admin/v1/accounts/{A}/keys/{created['id']}/rotate", json={}, headers=admin())
    newest = resp.json()["key"]  # no grace: every older secret stops now
    assert not await _works(client, created["key"]) and not await _works(client, rotated["key"])
    assert await _works(client, newest)
    for bad in ({"grace_seconds": -1}, {"grace_seconds": "60"}, {"grace_seconds": 10**9}, {"grace_seconds": True}):
        _error(await client.post(f"/admin/v1/accounts/{A}/keys/{created['id']}/rotate", json=bad, headers=admin()),
               400, "invalid_request")


async def test_expiry_is_validated_stored_and_enforced(client: httpx2.AsyncClient) -> None:
    soon = int(time.time()) + 2
    created = await _create(client, A, expires_at=soon)
    assert created["expires_at"] == soon
    iso = await _create(client, A, expires_at="2099-01-01T00:00:00Z")
    assert iso["expires_at"] == 4070908800
    for bad in ("tomorrow", "2099-01-01T00:00:00", True, 1.5, 0, int(time.time()) - 10):
        resp = await client.post(f"/admin/v1/accounts/{A}/keys", json={"expires_at": bad}, headers=admin())
        assert resp.status_code == 400, (bad, resp.text)
    assert await _works(client, created["key"])
    deadline = time.monotonic() + 10
    while await _works(client, created["key"]):
        assert time.monotonic() < deadline, "the key still works after its expiry"
        await asyncio.sleep(0.2)
    _error(await client.get("/v1/key", headers=auth(created["key"])), 401, "api_key_expired")
    got = (await client.get(f"/admin/v1/accounts/{A}/keys/{created['id']}", headers=admin())).json()
    assert got["status"] == "expired"
    resp = await client.patch(f"/admin/v1/accounts/{A}/keys/{created['id']}", json={"expires_at": None},
                              headers=admin())
    assert resp.status_code == 200 and resp.json()["expires_at"] is None
    assert await _works(client, created["key"])


async def test_an_account_admin_manages_its_own_keys_but_not_another_accounts_nor_credits(
    client: httpx2.AsyncClient,
) -> None:
    mine = await _create(client, A, account_admin=True)
    theirs = await _create(client, B, label="b-key")
    me = auth(mine["key"])
    made = await _create(client, A, headers=me, label="made by the account admin")
    resp = await client.post(f"/admin/v1/accounts/{A}/keys", json={"account_admin": True}, headers=me)
    _error(resp, 403, "permission_denied")  # only the operator makes account admins
    listed = (await client.get(f"/admin/v1/accounts/{A}/keys", headers=me)).json()
    assert {k["id"] for k in listed["data"]} == {mine["id"], made["id"]}
    rotated = await client.post(f"/admin/v1/accounts/{A}/keys/{made['id']}/rotate", json={}, headers=me)
    assert rotated.status_code == 200
    assert (await client.delete(f"/admin/v1/accounts/{A}/keys/{made['id']}", headers=me)).status_code == 200

    for method, path, body in [
        ("GET", f"/admin/v1/accounts/{B}/keys", None),
        ("POST", f"/admin/v1/accounts/{B}/keys", {"label": "intruder"}),
        ("GET", f"/admin/v1/accounts/{B}/keys/{theirs['id']}", None),
        ("PATCH", f"/admin/v1/accounts/{B}/keys/{theirs['id']}", {"label": "mine"}),
        ("DELETE", f"/admin/v1/accounts/{B}/keys/{theirs['id']}", None),
        ("POST", f"/admin/v1/accounts/{B}/keys/{theirs['id']}/rotate", {}),
    ]:
        _error(await client.request(method, path, json=body, headers=me), 403, "permission_denied")
    # B's key through A's path: billing looks it up within A, so it is not found (and untouched).
    _error(await client.delete(f"/admin/v1/accounts/{A}/keys/{theirs['id']}", headers=me), 404, "key_not_found")
    assert await _works(client, theirs["key"])
    b_keys = (await client.get(f"/admin/v1/accounts/{B}/keys", headers=admin())).json()["data"]
    assert [(k["id"], k["label"], k["status"]) for k in b_keys] == [(theirs["id"], "b-key", "active")]

    # Never credits, balances or the ledger.
    for method, path, body in [
        ("POST", f"/admin/v1/accounts/{A}/credits", {"amount": "5", "idempotency_key": "k1"}),
        ("GET", f"/admin/v1/accounts/{A}/balance", None),
        ("GET", f"/admin/v1/accounts/{A}/ledger", None),
    ]:
        _error(await client.request(method, path, json=body, headers=me), 401, "invalid_admin_token")
    balance = (await client.get(f"/admin/v1/accounts/{A}/balance", headers=admin())).json()
    assert balance["balance_nanos"] == 0

    # A plain key of the account manages nothing; a revoked admin key stops being one.
    plain = await _create(client, A)
    _error(await client.get(f"/admin/v1/accounts/{A}/keys", headers=auth(plain["key"])), 403, "permission_denied")
    await client.delete(f"/admin/v1/accounts/{A}/keys/{mine['id']}", headers=admin())
    _error(await client.get(f"/admin/v1/accounts/{A}/keys", headers=me), 401, "api_key_revoked")


async def test_teams_and_projects_and_the_keys_that_belong_to_them(client: httpx2.AsyncClient) -> None:
    resp = await client.post(f"/admin/v1/accounts/{A}/teams", json={"id": "research", "name": "Research"},
                             headers=admin())
    assert resp.status_code == 201, resp.text
    assert resp.json() | {"created_at": 0} == {"object": "team", "id": "research", "account_id": A,
                                               "name": "Research", "archived": False, "created_at": 0,
                                               "archived_at": None, "updated_at": None}
    again = await client.post(f"/admin/v1/accounts/{A}/teams", json={"id": "research", "name": "Research"},
                              headers=admin())
    assert again.json()["created_at"] == resp.json()["created_at"]  # idempotent with the same id and name
    _error(await client.post(f"/admin/v1/accounts/{A}/teams", json={"id": "research", "name": "Other"},
                             headers=admin()), 409, "group_exists")
    _error(await client.post(f"/admin/v1/accounts/{A}/teams", json={"id": "bad id", "name": "x"}, headers=admin()),
           400, "invalid_argument")
    _error(await client.post(f"/admin/v1/accounts/{A}/teams", json={}, headers=admin()), 400,
           "missing_required_parameter")
    project = (await client.post(f"/admin/v1/accounts/{A}/projects", json={"name": "Chat bot"},
                                 headers=admin())).json()
    assert project["object"] == "project" and project["id"].startswith("project_")

    key = await _create(client, A, team="research", project=project["id"])
    assert (key["team"], key["project"]) == ("research", project["id"])
    _error(await client.post(f"/admin/v1/accounts/{A}/keys", json={"team": "ghost"}, headers=admin()),
           404, "team_not_found")
    _error(await client.post(f"/admin/v1/accounts/{B}/keys", json={"team": "research"}, headers=admin()),
           404, "team_not_found")  # A's team does not exist in B

    resp = await client.patch(f"/admin/v1/accounts/{A}/teams/research", json={"name": "R&D", "archived": True},
                              headers=admin())
    assert resp.status_code == 200 and resp.json()["archived"] and resp.json()["name"] == "R&D"
    assert (await client.get(f"/admin/v1/accounts/{A}/teams", headers=admin())).json()["data"] == []
    listed = (await client.get(f"/admin/v1/accounts/{A}/teams?include_archived=true", headers=admin())).json()
    assert [t["id"] for t in listed["data"]] == ["research"]
    _error(await client.post(f"/admin/v1/accounts/{A}/keys", json={"team": "research"}, headers=admin()),
           409, "group_archived")
    assert await _works(client, key["key"])  # a key already in it keeps working
    _error(await client.patch(f"/admin/v1/accounts/{A}/teams/research", json={"archived": "yes"}, headers=admin()),
           400, "invalid_type")
    _error(await client.get(f"/admin/v1/accounts/{A}/projects/ghost", headers=admin()), 404, "project_not_found")

    await client.post(f"/admin/v1/accounts/{A}/teams", json={"id": "search", "name": "Search"}, headers=admin())
    moved = await client.patch(f"/admin/v1/accounts/{A}/keys/{key['id']}", json={"team": "search", "project": ""},
                               headers=admin())
    assert moved.status_code == 200 and (moved.json()["team"], moved.json()["project"]) == ("search", "")

    # An account admin manages its own account's teams and projects, never another account's.
    me = auth((await _create(client, A, account_admin=True))["key"])
    resp = await client.post(f"/admin/v1/accounts/{A}/projects", json={"id": "infra", "name": "Infra"}, headers=me)
    assert resp.status_code == 201
    resp = await client.patch(f"/admin/v1/accounts/{A}/teams/search", json={"name": "Find"}, headers=me)
    assert resp.status_code == 200 and resp.json()["name"] == "Find"
    for method, path, body in [
        ("POST", f"/admin/v1/accounts/{B}/teams", {"name": "intruders"}),
        ("GET", f"/admin/v1/accounts/{B}/teams", None),
        ("GET", f"/admin/v1/accounts/{B}/projects", None),
        ("PATCH", f"/admin/v1/accounts/{B}/teams/x", {"name": "y"}),
    ]:
        _error(await client.request(method, path, json=body, headers=me), 403, "permission_denied")
    assert (await client.get(f"/admin/v1/accounts/{B}/teams", headers=admin())).json()["data"] == []
