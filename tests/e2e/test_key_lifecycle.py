"""Key lifecycle through real processes: chat requests with a key that is rotated (old secret within and past its
grace), revoked and expired, answered by the real billing behind the real ingress; teams and projects and the tags
that the usage events carry; and the billing log, rebuilt, equals the live keys."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from tollgate.events.v1 import usage_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import replay_topics
from tollgate_dev.platform import Platform

from .tenant import Tenant, mock_calls
from .test_request_path import check_rebuilds_equal_live

pytestmark = pytest.mark.e2e


def _ask(platform: Platform, secret: str) -> None:
    client = openai.OpenAI(base_url=f"{platform.ingress_url}/v1", api_key=secret, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5)
    assert reply.choices


def _refused(platform: Platform, secret: str, code: str) -> None:
    before = len(mock_calls(platform))
    with pytest.raises(openai.AuthenticationError) as caught:
        _ask(platform, secret)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == code  # type: ignore[index]
    assert len(mock_calls(platform)) == before  # the upstream never saw it


def test_rotate_with_grace_then_revoke_and_expiry_over_real_requests(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    keys = platform.admin("GET", f"/admin/v1/accounts/{tenant.account_id}/keys")["data"]
    key_id = keys[0]["id"]  # type: ignore[index]
    _ask(platform, tenant.api_key)

    rotated = platform.admin("POST", f"/admin/v1/accounts/{tenant.account_id}/keys/{key_id}/rotate",
                             {"grace_seconds": 2})
    new_secret = str(rotated["key"])
    _ask(platform, new_secret)
    _ask(platform, tenant.api_key)  # within the grace
    time.sleep(2.2)
    _refused(platform, tenant.api_key, "api_key_expired")
    _ask(platform, new_secret)

    revoked = platform.admin("DELETE", f"/admin/v1/accounts/{tenant.account_id}/keys/{key_id}")
    assert revoked["status"] == "revoked"
    _refused(platform, new_secret, "api_key_revoked")  # the very next request

    soon = int(time.time()) + 2
    expiring = platform.admin("POST", f"/admin/v1/accounts/{tenant.account_id}/keys", {"expires_at": soon})
    _ask(platform, str(expiring["key"]))
    time.sleep(max(0.0, soon - time.time()) + 0.2)
    _refused(platform, str(expiring["key"]), "api_key_expired")

    tenant.settle()
    check_rebuilds_equal_live(platform, "key-lifecycle")


def _usage_event(platform: Platform, request_id: str) -> usage_pb2.UsageRecorded:
    """The UsageRecorded ingress published for ``request_id``, read back from the real broker."""
    found: list[usage_pb2.UsageRecorded] = []

    async def on_batch(items: list[tuple[Envelope, object]]) -> None:
        found.extend(env.message() for env, _ in items if env.id == request_id)  # type: ignore[misc]

    deadline = time.monotonic() + 30
    while not found:
        asyncio.run(replay_topics(platform.bootstrap, [Topics.USAGE], on_batch))
        if not found:
            assert time.monotonic() < deadline, f"no usage event for {request_id}"
            time.sleep(0.5)
    return found[0]


def test_a_key_in_a_team_and_project_meters_them_with_the_callers_tags(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    base = f"/admin/v1/accounts/{tenant.account_id}"
    team = platform.admin("POST", f"{base}/teams", {"id": "research", "name": "Research"})
    project = platform.admin("POST", f"{base}/projects", {"name": "Chat bot"})
    key = platform.admin("POST", f"{base}/keys", {"team": team["id"], "project": project["id"]})
    resp = httpx.post(
        f"{platform.ingress_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
              "metadata": {"feature": "search"}, "user": "end-user-9"},
        headers={"Authorization": f"Bearer {key['key']}", "X-Tollgate-Tags": "env=prod,cost-center=cc%2F7"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    event = _usage_event(platform, resp.headers["x-request-id"])
    assert (event.account_id, event.key_id, event.team, event.project) == (
        tenant.account_id, key["id"], "research", project["id"])
    assert dict(event.tags) == {"feature": "search", "user": "end-user-9", "env": "prod", "cost-center": "cc/7"}

    bad = httpx.post(f"{platform.ingress_url}/v1/chat/completions",
                     json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                     headers={"Authorization": f"Bearer {key['key']}", "X-Tollgate-Tags": "no pairs here"},
                     timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Tollgate-Tags"
    tenant.settle()
    check_rebuilds_equal_live(platform, "groups")
