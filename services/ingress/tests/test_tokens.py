"""Prompt token counting for the hold: OpenAI's chat formula over the bundled cl100k tokenizer."""

from __future__ import annotations

import threading
from typing import Any

import httpx2
from ingress_fakes import Fakes, auth
from tollgate_ingress.tokens import INLINE_MAX_BYTES, PromptTokenCounter

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


class _Recording(PromptTokenCounter):
    """Records the thread each count ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def messages(self, messages: Any, extras: Any = ()) -> int:
        self.threads.append(threading.current_thread().name)
        return super().messages(messages, extras)


async def test_large_prompts_are_counted_off_the_event_loop_small_ones_inline() -> None:
    """Issue 12: tokenising a large prompt on the loop stalls every other request on the replica (a 1 MiB prompt
    ~150 ms: bench/tokenise.py). Above INLINE_MAX_BYTES of body the count runs in the tokeniser thread; the
    count itself is the same either way."""
    recording = _Recording()
    small = [{"role": "user", "content": "hello world"}]
    big = [{"role": "user", "content": "lorem ipsum dolor " * 4000}]
    loop_thread = threading.current_thread().name
    try:
        assert await recording.count(small, (), INLINE_MAX_BYTES) == counter.messages(small)
        assert await recording.count(big, (), INLINE_MAX_BYTES + 1) == counter.messages(big)
    finally:
        recording.close()
    assert recording.threads[0] == loop_thread
    assert recording.threads[1].startswith("tokeniser")


async def test_a_large_chat_request_is_held_for_the_same_count(client: httpx2.AsyncClient, fakes: Fakes) -> None:
    content = "lorem ipsum dolor " * 4000  # 72 KB: counted in the tokeniser thread
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    resp = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert resp.status_code == 200, resp.text
    assert fakes.billing.authorize_calls[-1].prompt_tokens == counter.messages(body["messages"])  # type: ignore[arg-type]
