"""The response scanner's window logic (pure: policy is a small regex inspector here, the real one meets ingress in
test_policy_path.py and tests/e2e/test_dlp.py)."""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest
from tollgate_ingress.policy_client import Action, Finding, Inspection, Verdict
from tollgate_ingress.response_scan import (
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    ResponseBlocked,
    StreamScanner,
    scan_completion,
)

# Emails and spaced card numbers (the space makes the scanner's whitespace cut land inside the entity).
PATTERNS = {
    "email": re.compile(r"[a-z0-9.]+@[a-z0-9-]+(?:\.[a-z]+)+"),
    "payment_card": re.compile(r"\d{4} \d{4} \d{4} \d{4}"),
    # Open-ended, like real key detectors: it also matches a prefix of a key cut off by the window's end.
    "secret": re.compile(r"sk-[A-Za-z0-9]{20,}"),
}


class RegexPolicy:
    """Redacts (or blocks) the patterns, records every inspected text and sequence number."""

    def __init__(self, action: Action = Action.REDACT) -> None:
        self.action = action
        self.calls: list[tuple[list[str], int]] = []

    async def __call__(self, texts: list[str], sequence: int) -> Inspection:
        self.calls.append((texts, sequence))
        findings = [
            Finding(kind, m.start(), m.end(), self.action)
            for i, text in enumerate(texts)
            for kind, pattern in PATTERNS.items()
            for m in pattern.finditer(text)
        ]
        if not findings:
            return Inspection(Verdict.ALLOW)
        if self.action is Action.BLOCK:
            return Inspection(Verdict.BLOCK, findings=tuple(findings))
        return Inspection(
            Verdict.REDACT, findings=tuple(findings), redacted_texts=tuple(_redact_whole(t) for t in texts)
        )


def _redact_whole(text: str) -> str:
    """What redacting the whole text at once gives (numbered by value, per type, in order of appearance)."""
    numbers: dict[tuple[str, str], int] = {}
    spans = sorted((m.start(), m.end(), kind) for kind, p in PATTERNS.items() for m in p.finditer(text))
    out, at = [], 0
    for start, end, kind in spans:
        value = text[start:end]
        n = numbers.setdefault((kind, value), 1 + sum(1 for k, _ in numbers if k == kind))
        out += [text[at:start], f"[{kind.upper()}_{n}]"]
        at = end
    return "".join([*out, text[at:]])


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """A chunk as OpenAI sends it (``logprobs: null`` on every choice)."""
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 7,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
    )


def _text(chunks: list[bytes]) -> str:
    out = []
    for raw in chunks:
        for choice in orjson.loads(raw)["choices"]:
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


def _answer(seed: int) -> tuple[str, int]:
    """~3 KB of prose with an email or a card every few words, so entities fall on every possible window cut."""
    rng = random.Random(seed)
    words = ["the", "invoice", "was", "sent", "to", "our", "team", "yesterday,", "please", "check."]
    parts: list[str] = []
    planted = 0
    while sum(map(len, parts)) < 3000:
        r = rng.random()
        if r < 0.08:
            parts.append(f"user{rng.randrange(10**6)}.name@mail-{rng.randrange(99)}.example.com")
            planted += 1
        elif r < 0.12:
            parts.append(" ".join(str(rng.randrange(1000, 9999)) for _ in range(4)))
            planted += 1
        else:
            parts.append(rng.choice(words))
    return " ".join(parts), planted


@pytest.mark.parametrize("seed", range(6))
async def test_entities_on_window_boundaries_are_caught_whatever_the_chunking(seed: int) -> None:
    text, planted = _answer(seed)
    rng = random.Random(seed + 100)
    policy = RegexPolicy()
    scanner = StreamScanner(policy)
    out: list[bytes] = []
    at = 0
    while at < len(text):
        size = rng.choice([1, 2, 3, 5, 8, 13, 40])
        out += await scanner.feed(_chunk({"content": text[at : at + size]}))
        at += size
        # No text is held longer than a window: what is pending never reaches window + overlap.
        assert scanner.held < DEFAULT_WINDOW + DEFAULT_OVERLAP
    out += await scanner.finish()
    sent = _text(out)
    assert sent == _redact_whole(text)  # every entity redacted, nothing else changed, numbering stream-wide
    assert not any(p.search(sent) for p in PATTERNS.values())
    assert planted > 10 and len(policy.calls) > 5
    assert [seq for _texts, seq in policy.calls] == list(range(len(policy.calls)))


async def test_keys_longer_than_the_overlap_are_redacted_whole_when_the_detector_matches_a_prefix() -> None:
    rng = random.Random(7)
    keys = ["sk-" + "".join(rng.choice("ABCDEFabcdef0123456789") for _ in range(n)) for n in (150, 200, 300)]
    text = " ".join(f"some filler words here to move the key around {k} and more." for k in keys) * 2
    for chunk_size in (1, 7, 50):
        scanner = StreamScanner(RegexPolicy())
        out: list[bytes] = []
        for at in range(0, len(text), chunk_size):
            out += await scanner.feed(_chunk({"content": text[at : at + chunk_size]}))
        out += await scanner.finish()
        sent = _text(out)
        assert sent == _redact_whole(text)
        assert not any(k[3:40] in sent for k in keys)


async def test_chunk_order_is_kept_role_text_finish_usage() -> None:
    policy = RegexPolicy()
    scanner = StreamScanner(policy, window=16, overlap=8)
    out: list[bytes] = []
    out += await scanner.feed(_chunk({"role": "assistant", "content": ""}))
    for piece in ["Write to ", "ann@corp.example.org", " today, ", "or to bob@x.example.com", " later."]:
        out += await scanner.feed(_chunk({"content": piece}))
    out += await scanner.feed(_chunk({}, "stop"))
    out += await scanner.feed(
        orjson.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 7,
                "model": "m",
                "choices": [],
                "usage": {"total_tokens": 9},
            }
        )
    )
    out += await scanner.finish()
    decoded = [orjson.loads(c) for c in out]
    assert decoded[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert _text(out) == "Write to [EMAIL_1] today, or to [EMAIL_2] later."
    assert decoded[-2]["choices"][0]["finish_reason"] == "stop"
    assert decoded[-1]["choices"] == [] and decoded[-1]["usage"] == {"total_tokens": 9}
    assert all(d["id"] == "chatcmpl-1" and d["created"] == 7 and d["model"] == "m" for d in decoded)


async def test_text_goes_out_before_the_stream_ends() -> None:
    scanner = StreamScanner(RegexPolicy())
    first: list[bytes] = []
    for _ in range(100):
        first += await scanner.feed(_chunk({"content": "plain words "}))
        if first:
            break
    assert first, "a long answer must not be held back whole"
    assert len(_text(first)) <= DEFAULT_WINDOW + DEFAULT_OVERLAP


async def test_a_blocked_window_raises_with_types_only() -> None:
    scanner = StreamScanner(RegexPolicy(Action.BLOCK), window=16, overlap=8)
    with pytest.raises(ResponseBlocked) as caught:
        for piece in ["my card is ", "4111 1111 ", "1111 1111", " ok"]:
            await scanner.feed(_chunk({"content": piece}))
        await scanner.finish()
    assert caught.value.kinds == ["payment_card"]
    assert "4111" not in str(caught.value)


async def test_streamed_tool_call_arguments_are_scanned() -> None:
    scanner = StreamScanner(RegexPolicy(), window=16, overlap=8)
    out: list[bytes] = []
    out += await scanner.feed(
        _chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "send", "arguments": ""}}
                ]
            }
        )
    )
    for piece in ['{"to": "eve@', 'spy.example.net", ', '"body": "hi"}']:
        out += await scanner.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    out += await scanner.feed(_chunk({}, "tool_calls"))
    calls = [c for raw in out for ch in orjson.loads(raw)["choices"] for c in ch["delta"].get("tool_calls", ())]
    assert calls[0]["id"] == "call_1" and calls[0]["function"]["name"] == "send"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"to": "[EMAIL_1]", "body": "hi"}'
    assert orjson.loads(out[-1])["choices"][0]["finish_reason"] == "tool_calls"


async def test_completion_texts_and_tool_arguments_are_redacted_in_place() -> None:
    body = {
        "id": "c",
        "object": "chat.completion",
        "usage": {"total_tokens": 3},
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "mail ann@corp.example.org",
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"card": "4111 1111 1111 1111"}'},
                        },
                    ],
                },
                "finish_reason": "stop",
            }
        ],
    }
    out = orjson.loads(await scan_completion(orjson.dumps(body), RegexPolicy()))
    message = out["choices"][0]["message"]
    assert message["content"] == "mail [EMAIL_1]"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"card": "[PAYMENT_CARD_1]"}'
    assert out["usage"] == body["usage"] and out["id"] == "c"


async def test_clean_completion_is_returned_byte_for_byte_and_block_raises() -> None:
    raw = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "all fine"}}]})
    assert await scan_completion(raw, RegexPolicy()) is raw
    blocked = orjson.dumps({"choices": [{"index": 0, "message": {"content": "ann@corp.example.org"}}]})
    with pytest.raises(ResponseBlocked):
        await scan_completion(blocked, RegexPolicy(Action.BLOCK))
