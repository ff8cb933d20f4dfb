"""The request path across real processes, with the official openai SDK as the client.

The mock upstream's own record of every call it served is the ground truth that billing must match.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, rebuild, resale_price

pytestmark = pytest.mark.e2e

CARD = "4111 1111 1111 1111"


def run_completions(tenant: Tenant) -> tuple[str, str]:
    client = tenant.client()
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say something nice about gateways."}]
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream to me."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    return reply.choices[0].message.content or "", text


def check_balance_matches_upstream_record(platform: Platform, tenant: Tenant, calls_before: int) -> None:
    served = mock_calls(platform)[calls_before:]
    assert len(served) == 2, served
    expected = sum(
        resale_price(platform, "gpt-4o-mini", int(c["usage"]["prompt_tokens"]),  # type: ignore[index]
                     int(c["usage"]["completion_tokens"]))  # type: ignore[index]
        for c in served
    )
    assert expected > 0
    after = tenant.settle()
    assert after["balance_nanos"] == 10 * NANOS - expected
    assert after["available_nanos"] == after["balance_nanos"]


def check_ledger_balances(tenant: Tenant) -> None:
    entries = tenant.ledger()
    by_txn: dict[str, int] = {}
    for e in entries:
        by_txn[str(e["transaction_id"])] = by_txn.get(str(e["transaction_id"]), 0) + int(e["amount_nanos"])  # type: ignore[call-overload]
    assert by_txn and all(total == 0 for total in by_txn.values()), by_txn
    wallet = sum(int(e["amount_nanos"]) for e in entries  # type: ignore[call-overload]
                 if e["ledger_account"] == f"wallet:{tenant.account_id}")
    assert wallet == tenant.balance()["balance_nanos"]


def check_rebuilds_equal_live(platform: Platform, tmp_path_name: str) -> None:
    for service in ("metering", "billing"):
        for attempt in range(5):  # the live outbox may still be publishing its last events
            result = rebuild(platform, service, f"sqlite:///{platform.config.var_dir}/{service}-rebuild-{tmp_path_name}-{attempt}.db")
            if result.returncode == 0:
                break
            time.sleep(1.0)
        assert result.returncode == 0, f"{service} rebuild differs from live:\n{result.stdout}\n{result.stderr}"


class TestRequestPath:
    def test_completions_are_billed_exactly_what_the_upstream_served(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        before = len(mock_calls(platform))
        run_completions(tenant)
        check_balance_matches_upstream_record(platform, tenant, before)
        check_ledger_balances(tenant)

        key = httpx.get(f"{platform.ingress_url}/v1/key", headers={"Authorization": f"Bearer {tenant.api_key}"}).json()
        assert key["data"]["currency"] == "USD"
        assert round(key["data"]["balance"] * NANOS) == tenant.balance()["balance_nanos"]
        assert round(key["data"]["usage"] * NANOS) == 10 * NANOS - tenant.balance()["balance_nanos"]
        assert key["data"]["limit"] is None

    def test_models_are_listed(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        ids = {m.id for m in tenant.client().models.list()}
        assert "gpt-4o-mini" in ids

    def test_card_number_is_redacted_before_it_leaves(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        before = len(mock_calls(platform))
        tenant.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"My card is {CARD}, is that ok?"}]
        )
        served = mock_calls(platform)[before:]
        assert len(served) == 1
        sent = str(served[0]["body"])
        assert CARD not in sent and CARD.replace(" ", "") not in sent
        assert "[PAYMENT_CARD_1]" in sent

    def test_card_number_is_blocked_when_policy_says_block(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        platform.admin("PUT", f"/admin/v1/accounts/{tenant.account_id}/policy",
                       {"rules": [{"detector": "payment_card", "action": "block"}]})
        before = len(mock_calls(platform))
        with pytest.raises(openai.PermissionDeniedError) as err:
            tenant.client().chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"card {CARD}"}]
            )
        assert err.value.status_code == 403
        assert err.value.code == "policy_violation"
        assert CARD not in str(err.value.body)
        assert len(mock_calls(platform)) == before, "the upstream must never be called"
        assert tenant.settle()["balance_nanos"] == 10 * NANOS, "a blocked request costs nothing"

    def test_account_without_balance_gets_402(self, platform: Platform) -> None:
        tenant = Tenant.create(platform, credit=None)
        before = len(mock_calls(platform))
        with pytest.raises(openai.APIStatusError) as err:
            tenant.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 402
        assert len(mock_calls(platform)) == before

    def test_malformed_json_gets_400(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        resp = httpx.post(f"{platform.ingress_url}/v1/chat/completions", content=b'{"model": "gpt-4o-mini", "messa',
                          headers={"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"})
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"

    def test_bad_key_gets_401(self, platform: Platform) -> None:
        client = openai.OpenAI(base_url=f"{platform.ingress_url}/v1", api_key="tg-not-a-real-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    def test_rebuild_from_the_log_equals_live_state(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        run_completions(tenant)
        tenant.settle()
        check_rebuilds_equal_live(platform, "sqlite")


class TestOnPostgres:
    """The same money path with billing, metering and policy on PostgreSQL."""

    def test_completions_billed_and_rebuilt(self, pg_platform: Platform) -> None:
        tenant = Tenant.create(pg_platform)
        before = len(mock_calls(pg_platform))
        run_completions(tenant)
        check_balance_matches_upstream_record(pg_platform, tenant, before)
        check_ledger_balances(tenant)
        check_rebuilds_equal_live(pg_platform, "pg")
