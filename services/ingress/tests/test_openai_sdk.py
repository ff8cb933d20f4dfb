"""The official openai SDK as the client, over ASGI: what an application developer actually runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx2
import openai
import pytest
from ingress_fakes import GOOD_KEY, Failure, Fakes, usage_event
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb


@pytest.fixture
async def sdk(app: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app))
    async with openai.AsyncOpenAI(base_url="http://ingress/v1", api_key=GOOD_KEY, http_client=http,
                                  max_retries=0) as client:
        yield client


async def test_sdk_completion(sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}])
    assert reply.choices[0].message.content == "echo: ping"
    assert reply.usage is not None and reply.usage.total_tokens == 19


async def test_sdk_stream_with_usage(sdk: openai.AsyncOpenAI, broker: str) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_sdk_models(sdk: openai.AsyncOpenAI) -> None:
    models = [m async for m in sdk.models.list()]
    assert [m.id for m in models] == ["gpt-4o-mini", "claude-3-5-haiku"]
    assert models[1].owned_by == "anthropic"


async def test_sdk_sees_typed_errors(sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str) -> None:
    messages: Any = [{"role": "user", "content": "secret token sk-live-123"}]
    fakes.policy.rules["sk-live-123"] = ("secret", ppb.ACTION_BLOCK)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert denied.value.code == "policy_violation"
    assert "sk-live-123" not in str(denied.value.body)
    request_id = denied.value.response.headers["x-request-id"]
    _env, event, _key = await usage_event(broker, request_id)
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_BLOCKED

    fakes.billing.authorize_failure = Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "rate_limited", 3)
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert limited.value.response.headers["retry-after"] == "3"

    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, n=0)
    assert bad.value.param == "n"

    wrong = sdk.with_options(api_key="tg-wrong")
    fakes.billing.authorize_failure = None
    with pytest.raises(openai.AuthenticationError):
        await wrong.chat.completions.create(model="gpt-4o-mini", messages=messages)
