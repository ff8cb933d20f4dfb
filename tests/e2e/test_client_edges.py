"""The SDKs' edge cases end to end, with the official ``openai`` and ``anthropic`` SDKs as clients against the real
processes and the mock upstream as the provider: what a client sees when the provider refuses its request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from tollgate_dev.mock_wire import REDACTED_THINKING_TRIGGER, THINKING_TEXT, thinking_signature
from tollgate_dev.platform import Platform
from tollgate_dev.ports import free_port

from .conftest import _kafka, _start
from .tenant import NANOS, Tenant, mock_calls, resale_price
from .test_providers import normalised

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


@pytest.mark.parametrize(("model", "extra", "param"), [
    ("claude-3-5-haiku", {"logprobs": True}, "logprobs"),
    ("claude-3-5-haiku", {"n": 2}, "n"),
    ("gemini-2.0-flash", {"parallel_tool_calls": False,
                          "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "parallel_tool_calls"),
])
def test_a_parameter_the_routed_provider_cannot_honour_is_a_400_naming_it(
    platform: Platform, model: str, extra: dict[str, Any], param: str
) -> None:
    tenant = Tenant.create(platform)
    with pytest.raises(openai.BadRequestError) as caught:
        tenant.client().chat.completions.create(model=model, messages=HELLO, **extra)
    assert caught.value.param == param, caught.value.message
    assert tenant.settle()["balance_nanos"] == 10 * NANOS


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


def test_n_choices_are_served_held_for_and_billed_as_reported(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, n=3, max_tokens=5)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content and c.finish_reason == "length" for c in reply.choices)

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, n=2, stream=True,
                                            stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        usage = chunk.usage or usage
    assert texts[0] and texts[0] == texts[1]

    served = mock_calls(platform)[before:]
    assert [c["body"].get("n") for c in served] == [3, 2]
    # No cap from the client: the held model's cap is shared between the choices, so the upstream cannot
    # produce more than the hold covers.
    assert served[1]["body"]["max_completion_tokens"] == 16384 // 2
    assert reply.usage is not None and usage is not None
    for answer, record in zip((reply.usage, usage), served, strict=True):
        assert (answer.prompt_tokens, answer.completion_tokens) == (
            record["usage"]["prompt_tokens"], record["usage"]["completion_tokens"])
    assert served[0]["usage"]["completion_tokens"] == 3 * 5, "each choice's tokens are billed"
    expected = sum(resale_price(platform, "gpt-4o-mini", c["usage"]["prompt_tokens"],
                                c["usage"]["completion_tokens"]) for c in served)
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_logprobs_and_parallel_tool_calls_pass_through(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=6, logprobs=True,
                                           top_logprobs=3)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert "".join(t.token for t in logprobs.content) == reply.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in logprobs.content)
    assert all(t.logprob < 0 and t.bytes == list(t.token.encode()) for t in logprobs.content)

    streamed = []
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=6, stream=True,
                                                logprobs=True, top_logprobs=2):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert [t.token for t in streamed] == [t.token for t in logprobs.content]
    assert all(len(t.top_logprobs) == 2 for t in streamed)

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, logprobs=True, top_logprobs=25)
    assert (caught.value.param, caught.value.code) == ("top_logprobs", "integer_above_max_value")

    tools: list = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4, tools=tools,
                                   parallel_tool_calls=False)
    served = mock_calls(platform)[before:]
    assert [c["body"].get("logprobs") for c in served] == [True, True, True, None]
    assert served[-1]["body"]["parallel_tool_calls"] is False
    tenant.settle()


THINKING: Any = {"type": "enabled", "budget_tokens": 1024}
WEATHER: Any = [{"name": "weather", "description": "The weather in a city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def test_anthropic_thinking_blocks_round_trip_through_messages_to_a_claude_upstream(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = anthropic.Anthropic(base_url=platform.ingress_url, api_key=tenant.api_key, max_retries=0, timeout=30)
    before = len(mock_calls(platform))

    first = client.messages.create(model="claude-3-5-haiku", max_tokens=2048, thinking=THINKING, tools=WEATHER,
                                   tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "Weather in Paris?"}])
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking == THINKING_TEXT
    assert thinking.signature == thinking_signature(THINKING_TEXT)
    call = next(b for b in first.content if b.type == "tool_use")

    # The tool-use loop with thinking on: the signed thinking block goes back unchanged (the mock, like
    # Anthropic, refuses a thinking block whose signature does not match).
    with client.messages.stream(
        model="claude-3-5-haiku", max_tokens=2048, thinking=THINKING, tools=WEATHER,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds  # the SDK's thinking_delta and signature_delta events
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THINKING_TEXT  # type: ignore[union-attr]
    assert final.content[0].signature == thinking_signature(THINKING_TEXT)  # type: ignore[union-attr]

    redacted = client.messages.create(model="claude-3-5-haiku", max_tokens=2048, thinking=THINKING,
                                      messages=[{"role": "user", "content": REDACTED_THINKING_TRIGGER}])
    assert redacted.content[0].type == "redacted_thinking" and redacted.content[0].data
    with client.messages.stream(model="claude-3-5-haiku", max_tokens=2048, thinking=THINKING,
                                messages=[{"role": "user", "content": REDACTED_THINKING_TRIGGER}]) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0] == redacted.content[0]

    served = mock_calls(platform)[before:]
    assert [c["body"].get("thinking") for c in served] == [THINKING] * 4
    history = served[1]["body"]["messages"][1]["content"]
    assert history[0] == {"type": "thinking", "thinking": THINKING_TEXT,
                          "signature": thinking_signature(THINKING_TEXT)}
    # Thinking tokens are output tokens: billed as the upstream reported them.
    for reply, record in zip((first, final, redacted, streamed), served, strict=True):
        assert reply.usage.output_tokens == record["usage"]["output_tokens"]
    expected = sum(resale_price(platform, "claude-3-5-haiku", *normalised(c)) for c in served)
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected

    with pytest.raises(anthropic.BadRequestError) as caught:  # the upstream's own rule, its message passed on
        client.messages.create(model="claude-3-5-haiku", max_tokens=1024, thinking=THINKING,
                               messages=[{"role": "user", "content": "x"}])
    assert "`max_tokens` must be greater than `thinking.budget_tokens`" in caught.value.message


def test_chat_never_reaches_an_embedding_model_nor_embeddings_a_chat_model(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="text-embedding-3-small", messages=HELLO)
    assert chat.value.param == "model" and "/v1/embeddings" in chat.value.message
    with pytest.raises(openai.BadRequestError) as streamed:
        list(client.chat.completions.create(model="text-embedding-3-small", messages=HELLO, stream=True))
    assert streamed.value.param == "model"
    with pytest.raises(openai.BadRequestError) as embedding:
        client.embeddings.create(model="gpt-4o-mini", input="hello")
    assert embedding.value.param == "model" and "/v1/chat/completions" in embedding.value.message
    assert len(mock_calls(platform)) == before, "the wrong kind of call never reaches the upstream"
    assert tenant.settle()["balance_nanos"] == 10 * NANOS


@pytest.fixture(scope="module")
def gemini_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform whose catalogue serves a Gemini embedding model (and an OpenAI chat one) from the mock."""
    tmp = tmp_path_factory.mktemp("gemini-embeddings")
    mock_port = free_port()
    providers = tmp / "providers.yaml"
    providers.write_text(f"""
providers:
  google: {{kind: gemini, base_url: "http://127.0.0.1:{mock_port}"}}
  openai: {{kind: openai, base_url: "http://127.0.0.1:{mock_port}/v1"}}
models:
  gemini-embedding-001: {{provider: google, mode: embedding, owned_by: google}}
  gpt-4o-mini: {{provider: openai}}
""")
    book = tmp / "prices.yaml"
    book.write_text("""
version: gemini-embeddings-test
currency: USD
markup_bps: 2000
models:
  gemini-embedding-001: {input_price_nanos: 150, output_price_nanos: 0, max_output_tokens: 1}
  gpt-4o-mini: {input_price_nanos: 150, output_price_nanos: 600, max_output_tokens: 16384}
""")
    with _kafka(shared_ok=False) as kafka:
        p = _start(tmp, kafka, ports={"mock": mock_port},
                   extra_env={"router": {"ROUTER_PROVIDERS_FILE": str(providers)},
                              "metering": {"METERING_PRICE_BOOK_FILE": str(book)}})
        try:
            yield p
        finally:
            p.stop()


def test_gemini_embedding_deployments_serve_the_openai_sdk_and_bill_the_counted_input(
    gemini_platform: Platform,
) -> None:
    platform = gemini_platform
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    texts = ["The quick brown fox", "jumps over the lazy dog"]
    floats = client.embeddings.create(model="gemini-embedding-001", input=texts, dimensions=8,
                                      encoding_format="float")
    packed = client.embeddings.create(model="gemini-embedding-001", input="Hello there.")  # SDK default: base64
    assert [len(d.embedding) for d in floats.data] == [8, 8] and [d.index for d in floats.data] == [0, 1]
    assert len(packed.data[0].embedding) == 3072

    served = mock_calls(platform)[before:]
    assert [c["path"] for c in served] == ["/v1beta/models/gemini-embedding-001:batchEmbedContents"] * 2
    assert [r["content"]["parts"][0]["text"] for r in served[0]["body"]["requests"]] == texts
    assert served[0]["body"]["requests"][0]["outputDimensionality"] == 8
    assert all(c["usage"] is None for c in served), "Gemini reports no token count"
    # Billed: the tokenizer's count of the texts (what the mock counted with the same tokenizer), shown in usage.
    for reply, record in zip((floats, packed), served, strict=True):
        assert reply.usage.prompt_tokens == reply.usage.total_tokens == record["input_tokens"] > 0
    cost = sum(c["input_tokens"] for c in served) * 150
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - -(-cost * 12_000 // 10_000)

    hello = [9906, 1070, 13]  # "Hello there." in cl100k_base: ingress decodes token arrays for the policy
    client.embeddings.create(model="gemini-embedding-001", input=[hello], encoding_format="float")
    assert mock_calls(platform)[-1]["body"]["requests"][0]["content"]["parts"][0]["text"] == "Hello there."
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="gemini-embedding-001", messages=HELLO)
    assert chat.value.param == "model"


def test_models_list_and_retrieve_in_openai_and_anthropic_shapes(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    openai_client = tenant.client()
    claude = anthropic.Anthropic(base_url=platform.ingress_url, api_key=tenant.api_key, max_retries=0, timeout=30)

    model = openai_client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "openai")
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"

    listed = {m.id: m for m in claude.models.list()}  # x-api-key and anthropic-version, as the SDK sends them
    assert {"claude-3-5-haiku", "gpt-4o-mini"} <= set(listed) and listed["claude-3-5-haiku"].type == "model"
    retrieved = claude.models.retrieve("claude-3-5-haiku")
    assert (retrieved.id, retrieved.type, retrieved.display_name) == ("claude-3-5-haiku", "model", "claude-3-5-haiku")
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude.models.retrieve("no-such-model")
    assert unknown.value.body == {"type": "error", "error": {  # type: ignore[comparison-overlap]
        "type": "not_found_error", "message": "model: no-such-model"}}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=platform.ingress_url, api_key="tg-nope", max_retries=0).models.retrieve(
            "claude-3-5-haiku")


def test_claude_thinking_history_and_requests_meet_an_openai_model_cleanly(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = anthropic.Anthropic(base_url=platform.ingress_url, api_key=tenant.api_key, max_retries=0, timeout=30)
    history: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": THINKING_TEXT, "signature": thinking_signature(THINKING_TEXT)},
            {"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": "And now?"},
    ]
    before = len(mock_calls(platform))
    answer = client.messages.create(model="gpt-4o-mini", max_tokens=64, messages=history)
    assert answer.content[0].type == "text"
    sent = mock_calls(platform)[before]["body"]["messages"]
    assert all("reasoning_details" not in m for m in sent), "Claude's signed thinking is not sent to OpenAI"
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="gpt-4o-mini", max_tokens=2048, thinking=THINKING, messages=history)
    assert "Extended thinking" in caught.value.message
    assert len(mock_calls(platform)) == before + 1, "a thinking request is refused, not silently served without"
