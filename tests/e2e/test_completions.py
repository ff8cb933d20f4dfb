"""The legacy ``POST /v1/completions`` end to end with the official ``openai`` SDK: through ingress, billing,
policy and the router to the mock's OpenAI chat endpoint, charged exactly what the mock reported, once."""

from __future__ import annotations

import pytest
from tollgate_dev.platform import Platform

from .tenant import NANOS, Tenant, mock_calls, resale_price

pytestmark = pytest.mark.e2e


def test_completions_streaming_and_not_are_served_and_charged_exactly(platform: Platform) -> None:
    tenant = Tenant.create(platform)
    client = tenant.client()
    before = len(mock_calls(platform))
    completion = client.completions.create(model="gpt-4o-mini", prompt="Say hello.", max_tokens=64)
    assert completion.object == "text_completion" and completion.choices[0].text
    stream = client.completions.create(model="gpt-4o-mini", prompt="Stream to me.", max_tokens=64, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None

    served = mock_calls(platform)[before:]
    assert [(c["path"], c["stream"]) for c in served] == [("/v1/chat/completions", False),
                                                          ("/v1/chat/completions", True)]
    counts = [(int(c["usage"]["prompt_tokens"]), int(c["usage"]["completion_tokens"])) for c in served]  # type: ignore[index]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == counts[0]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == counts[1]
    expected = sum(resale_price(platform, "gpt-4o-mini", p, c) for p, c in counts)
    assert tenant.settle()["balance_nanos"] == 10 * NANOS - expected
