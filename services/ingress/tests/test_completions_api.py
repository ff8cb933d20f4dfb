"""The official openai SDK as the client of the legacy ``/v1/completions``, over ASGI, with fake billing, policy
and router: the prompt goes down the chat path, the answer comes back as ``text_completion``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from ingress_fakes import GOOD_KEY, Fakes, usage_event
from tollgate.events.v1 import usage_pb2


@pytest.fixture
async def sdk(app: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app))
    async with openai.AsyncOpenAI(base_url="http://ingress/v1", api_key=GOOD_KEY, http_client=http,
                                  max_retries=0) as client:
        yield client


async def test_a_completion_is_a_chat_turn_and_comes_back_as_text(
    sdk: openai.AsyncOpenAI, fakes: Fakes, broker: str
) -> None:
    raw = await sdk.completions.with_raw_response.create(model="gpt-4o-mini", prompt="Say this is a test",
                                                         temperature=0, stop=["\n"], user="u1")
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text == "echo: Say this is a test"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        12, 7)
    sent = fakes.router.bodies[-1]
    assert sent["messages"] == [{"role": "user", "content": "Say this is a test"}]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["user"]) == (16, 0, ["\n"], "u1")
    assert fakes.billing.authorize_calls[-1].max_output_tokens == 16  # OpenAI's default for completions
    _env, event, _key = await usage_event(broker, raw.headers["x-request-id"])
    assert event.outcome == usage_pb2.REQUEST_OUTCOME_SUCCEEDED and event.usage.completion_tokens == 7


async def test_a_streamed_completion_sends_text_chunks_then_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.completions.create(model="gpt-4o-mini", prompt="stream please", max_tokens=32,
                                          stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there!"
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 19


async def test_what_the_chat_path_cannot_do_is_refused(sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    for kwargs, param in (({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2]}, "prompt"),
                          ({"prompt": "x", "echo": True}, "echo"), ({"prompt": "x", "best_of": 2}, "best_of"),
                          ({"prompt": "x", "logprobs": 2}, "logprobs"), ({"prompt": "x", "suffix": "y"}, "suffix")):
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.completions.create(model="gpt-4o-mini", **kwargs)  # type: ignore[call-overload]
        assert bad.value.param == param
    assert fakes.billing.authorize_calls == []
