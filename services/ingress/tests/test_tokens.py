"""Prompt token counting for the hold: OpenAI's chat formula over the bundled cl100k tokenizer."""

from __future__ import annotations

from tollgate_ingress.tokens import PromptTokenCounter

counter = PromptTokenCounter()


def test_tokenizer_is_cl100k() -> None:
    assert counter.text("hello world") == 2
    assert counter.text("") == 0
    # Special-token text in a prompt is ordinary text, not an error and not one token.
    assert counter.text("<|endoftext|>") > 1


def test_openai_chat_formula() -> None:
    # 3 per message + tokens of each string field + 1 per name, + 3 for the reply's priming.
    assert counter.messages([{"role": "user", "content": "hello world"}]) == 3 + 1 + 2 + 3
    two = [{"role": "system", "content": "hello world"}, {"role": "user", "name": "bob", "content": "hello world"}]
    assert counter.messages(two) == 3 + (3 + 1 + 2) + (3 + 1 + counter.text("bob") + 1 + 2)


def test_cookbook_example_matches_openai() -> None:
    """The example from OpenAI's cookbook ("How to count tokens with tiktoken"): the API reported 129 prompt
    tokens for gpt-3.5-turbo/gpt-4 (cl100k)."""
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
         "jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will increase "
         "revenue."},
        {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to "
         "touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how "
         "to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
         "deliverable."},
    ]
    assert counter.messages(messages) == 129


def test_content_parts_and_extras_count() -> None:
    text_only = counter.messages([{"role": "user", "content": "describe this"}])
    with_image = counter.messages([{"role": "user", "content": [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
    ]}])
    assert with_image == text_only + 85
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert counter.messages([{"role": "user", "content": "hi"}], [tools]) > counter.messages(
        [{"role": "user", "content": "hi"}])
    calls = [{"role": "assistant", "content": None,
              "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    assert counter.messages(calls) > 3 + 1 + 3
