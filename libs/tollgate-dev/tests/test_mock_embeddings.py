"""The mock's OpenAI embeddings endpoint as the official openai SDK sees it: deterministic unit vectors, both
encodings, ``dimensions``, OpenAI's 400s, and a record whose usage is what billing must match."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import openai
import pytest
from tollgate_dev.mock_upstream import MockUpstream


@pytest.fixture
async def sdk(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0) as client:
        yield client


async def test_vectors_are_deterministic_unit_vectors_in_either_encoding(
    sdk: openai.AsyncOpenAI, mock: MockUpstream
) -> None:
    as_base64 = await sdk.embeddings.create(model="text-embedding-3-small", input=["hello world", "other"])
    as_float = await sdk.embeddings.create(model="text-embedding-3-small", input=["hello world", "other"],
                                           encoding_format="float")
    assert mock.calls[0]["body"]["encoding_format"] == "base64"  # the SDK's default, decoded by the SDK
    assert [d.embedding for d in as_base64.data] == [d.embedding for d in as_float.data]
    first, second = (d.embedding for d in as_float.data)
    assert len(first) == 1536 and first != second
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-5)
    large = await sdk.embeddings.create(model="text-embedding-3-large", input="hello world", dimensions=64)
    assert len(large.data[0].embedding) == 64 and large.model == "text-embedding-3-large"
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == 3  # "hello world" is 2, "other" 1
    assert mock.calls[1]["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_token_arrays_are_counted_by_length(sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert [d.index for d in reply.data] == [0, 1] and reply.usage.prompt_tokens == 4
    single = await sdk.embeddings.create(model="text-embedding-3-small", input=[5, 6])
    assert len(single.data) == 1 and single.usage.prompt_tokens == 2


async def test_openai_400s_are_reproduced(sdk: openai.AsyncOpenAI, mock: MockUpstream) -> None:
    for kwargs, param in (
        ({"model": "gpt-4o-mini", "input": "x"}, "model"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": [""]}, "input"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 2000}, "dimensions"),
        ({"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x " * 9000}, "input"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.embeddings.create(**kwargs)  # type: ignore[arg-type]
        assert bad.value.param == param
    assert all(c["status"] == 400 and c["usage"] is None for c in mock.calls)


async def test_faults_come_back_as_openai_errors(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await sdk.embeddings.create(model="text-embedding-3-small", input="x", extra_headers={"X-Mock-Fault": "429"})
    with pytest.raises(openai.InternalServerError):
        await sdk.embeddings.create(model="text-embedding-3-small", input="x", extra_body={"mock_fault": "500"})
