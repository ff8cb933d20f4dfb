"""Key lifecycle through real processes: chat requests with a key that is rotated (old secret within and past its
grace), revoked and expired, answered by the real billing behind the real ingress; and the billing log, rebuilt,
equals the live keys."""

from __future__ import annotations

import time

import openai
import pytest
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
