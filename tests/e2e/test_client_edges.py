"""The SDKs' edge cases end to end, with the official ``openai`` and ``anthropic`` SDKs as clients against the real
processes and the mock upstream as the provider: what a client sees when the provider refuses its request."""

from __future__ import annotations

import anthropic
import openai
import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls

pytestmark = pytest.mark.e2e

HELLO: list = [{"role": "user", "content": "Hello there."}]


def test_a_providers_400_reaches_the_openai_sdk_with_its_message_and_param(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20_000,
                                                   stream=stream)
            if stream:
                list(reply)  # type: ignore[arg-type]
        error = caught.value
        assert error.status_code == 400
        assert error.param == "max_tokens"
        assert "max_tokens is too large: 20000. This model supports at most 16384" in error.message
        assert error.type == "invalid_request_error"
    served = mock_calls(platform)[before:]
    assert len(served) == 2, "the provider itself refused both (no fallback, no retry of a caller's mistake)"
    assert tenant.settle()["balance_nanos"] == 10 * NANOS, "a refused request costs nothing"


def test_a_providers_400_reaches_the_anthropic_sdk_in_anthropics_error_json(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = anthropic.Anthropic(base_url=platform.ingress_url, api_key=tenant.api_key, max_retries=0, timeout=30)
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as caught:
            if stream:
                with client.messages.stream(model="gpt-4o-mini", max_tokens=20_000, messages=HELLO) as events:
                    list(events)
            else:
                client.messages.create(model="gpt-4o-mini", max_tokens=20_000, messages=HELLO)
        error = caught.value
        assert error.status_code == 400
        assert error.body == {"type": "error", "error": {  # type: ignore[comparison-overlap]
            "type": "invalid_request_error",
            "message": "max_tokens is too large: 20000. This model supports at most 16384 completion tokens, "
                       "whereas you provided 20000."}}
    assert tenant.settle()["balance_nanos"] == 10 * NANOS
