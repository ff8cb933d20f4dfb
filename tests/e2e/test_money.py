"""Money integrity across real processes: what a request may reach is what it is held and billed for.

The mock upstream's record of every call it served is the ground truth: the model it served is the model billed.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, resale_price

pytestmark = pytest.mark.e2e

FALLBACK_TO_GPT_4O = {"models": ["gpt-4o"], "provider": {"only": ["gpt-4o/mock"]}}


def _key(platform: Platform, tenant: Tenant, **fields: object) -> str:
    body = {"label": "limited", **fields}
    return str(platform.admin("POST", f"/admin/v1/accounts/{tenant.account_id}/keys", body)["key"])


class TestServedModelIsBilledModel:
    def test_a_fallback_outside_the_keys_allow_list_is_refused_before_the_upstream(self, platform: Platform) -> None:
        """A key limited to gpt-4o-mini cannot reach gpt-4o through the `models` fallback list."""
        tenant = Tenant.create(platform)
        limited = _key(platform, tenant, allowed_models=["gpt-4o-mini"])
        before = len(mock_calls(platform))
        client = openai.OpenAI(base_url=f"{platform.ingress_url}/v1", api_key=limited, max_retries=0, timeout=30)
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body=FALLBACK_TO_GPT_4O
            )
        assert err.value.status_code == 403
        assert err.value.code == "model_not_allowed"
        assert "gpt-4o" in str(err.value.body)
        assert len(mock_calls(platform)) == before, "the upstream must never be called"
        assert tenant.settle()["balance_nanos"] == 10 * NANOS

    def test_the_model_served_through_a_fallback_is_the_model_billed(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        before = len(mock_calls(platform))
        reply = tenant.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body=FALLBACK_TO_GPT_4O
        )
        served = mock_calls(platform)[before:]
        assert [c["model"] for c in served] == ["gpt-4o"]
        assert reply.usage is not None
        usage = served[0]["usage"]
        expected = resale_price(platform, "gpt-4o", int(usage["prompt_tokens"]),  # type: ignore[index]
                                int(usage["completion_tokens"]))  # type: ignore[index]
        assert expected > resale_price(platform, "gpt-4o-mini", int(usage["prompt_tokens"]),  # type: ignore[index]
                                       int(usage["completion_tokens"]))  # type: ignore[index]
        assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected

    def test_a_streamed_fallback_is_billed_at_the_model_served(self, platform: Platform) -> None:
        tenant = Tenant.create(platform)
        before = len(mock_calls(platform))
        chunks = list(
            tenant.client().chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True}, extra_body=FALLBACK_TO_GPT_4O,
            )
        )
        assert chunks[-1].usage is not None
        served = mock_calls(platform)[before:]
        assert [c["model"] for c in served] == ["gpt-4o"]
        usage = served[0]["usage"]
        expected = resale_price(platform, "gpt-4o", int(usage["prompt_tokens"]),  # type: ignore[index]
                                int(usage["completion_tokens"]))  # type: ignore[index]
        assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected

    def test_the_hold_covers_the_most_expensive_candidate(self, platform: Platform) -> None:
        """With just enough balance for gpt-4o-mini's maximum cost, a request that may fall back to gpt-4o is 402."""
        tenant = Tenant.create(platform, credit="0.001")
        before = len(mock_calls(platform))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        alone = httpx.post(f"{platform.ingress_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert alone.status_code == 200, alone.text
        wider = httpx.post(f"{platform.ingress_url}/v1/chat/completions", headers=headers, timeout=30,
                           json={**body, "max_tokens": 100, "models": ["gpt-4o"]})
        # gpt-4o-mini: ~100 × 720 nanos ≈ $0.00008; gpt-4o's 100 × 12,000 ≈ $0.0012 > the $0.001 credited.
        assert wider.status_code == 402, wider.text
        assert wider.json()["error"]["code"] == "insufficient_balance"
        assert len(mock_calls(platform)) == before + 1

    def test_a_model_outside_the_fallback_list_cannot_be_reached_by_provider_overrides(
        self, platform: Platform
    ) -> None:
        """`provider.only` naming another model's deployment leaves nothing eligible; it never switches models."""
        tenant = Tenant.create(platform)
        before = len(mock_calls(platform))
        resp = httpx.post(
            f"{platform.ingress_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {tenant.api_key}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                  "provider": {"only": ["gpt-4o/mock"]}},
            timeout=30,
        )
        assert resp.status_code == 400, resp.text
        assert len(mock_calls(platform)) == before
