"""DLP for the model's answer: a whole completion, or a stream inspected in windows without holding it back.

Non-streaming (:func:`scan_completion`): every text of the ``chat.completion`` body (each choice's message content
and each tool call's arguments) goes to policy in one Inspect (direction RESPONSE); REDACT rewrites those texts in
the JSON, BLOCK raises :class:`ResponseBlocked`.

Streaming (:class:`StreamScanner`): text is buffered per *channel* (a choice's content, or one tool call's
arguments) and inspected in windows:

- A channel's pending text is inspected once it reaches ``window + overlap`` characters (``first_window +
  overlap`` before anything of it was sent, so the first words are not held for a whole window). The part that goes out
  ends at a cut ``c ≤ len(pending) - overlap``, moved back to the last whitespace (so words are not split); the
  last ``overlap`` characters (at least) stay pending and are inspected again with the next window.
- A finding that crosses the cut moves the cut back to the finding's start (the entity stays pending whole), or,
  when it starts the pending text, forward to its end (it goes out redacted) — so text is never held for more
  than about one window.
- Each inspection is prefixed with up to ``overlap`` characters of the text already sent (left context for
  detectors that need it, e.g. ``password=…``); findings wholly inside that context are ignored.

**Max entity length covered:** any entity of at most ``overlap`` characters is seen whole by one inspection: if it
starts before the cut ``c`` it ends before ``c + overlap ≤ len(pending)``; if it starts at or after ``c`` it stays
pending and is inspected again. With the defaults (window 192, overlap 128) that covers every card, IBAN, email,
phone, IP, SSN, AWS/GitHub/Slack/Anthropic key. Up to ``window + overlap`` (320) characters when the detector also
matches a prefix of the entity, as open-ended key patterns do (OpenAI project keys, ~164): the crossing match moves
the cut back to its start, and the next window sees it whole from the start. Longer ones (PEM blocks, long JWTs)
only in part.

Placeholders in a stream are made here from the findings' types, ``[TYPE_n]`` numbered by value across the whole
stream (policy numbers per Inspect call, and a stream is many calls). Anything other than text in a chunk (the
role, tool-call ids and names, finish_reason) flushes the channels first, so the order of the stream is kept.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .policy_client import Action, Inspection, Verdict

__all__ = [
    "DEFAULT_FIRST_WINDOW",
    "DEFAULT_OVERLAP",
    "DEFAULT_WINDOW",
    "Inspector",
    "ResponseBlocked",
    "StreamScanner",
    "scan_completion",
]

DEFAULT_WINDOW = 192
DEFAULT_OVERLAP = 128
#: A channel's first window is smaller, so the first words reach the caller sooner (160 characters, ~40 tokens).
DEFAULT_FIRST_WINDOW = 32

#: ``inspect(texts, sequence)`` → policy's answer for the model's output (direction RESPONSE).
Inspector = Callable[[list[str], int], Awaitable[Inspection]]

_WHITESPACE = re.compile(r"\s")
_NOT_LABEL = re.compile(r"[^A-Z0-9]+")


class ResponseBlocked(Exception):
    """The policy blocks the answer; ``kinds`` are the finding types (never the data)."""

    def __init__(self, kinds: Sequence[str]) -> None:
        super().__init__(", ".join(kinds))
        self.kinds = list(kinds)


def _blocked(reply: Inspection) -> ResponseBlocked:
    return ResponseBlocked(reply.blocked_kinds())


# --- non-streaming ----------------------------------------------------------------------------------------------
def _completion_slots(body: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(object, key) for every text of a chat.completion: message content and tool-call arguments."""
    slots: list[tuple[dict[str, Any], str]] = []
    for choice in body.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            slots.append((message, "content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                slots.append((function, "arguments"))
    return slots


async def scan_completion(body_json: bytes, inspect: Inspector) -> bytes:
    """The completion as the caller may see it: unchanged, or with its texts redacted; raises on BLOCK."""
    try:
        body = orjson.loads(body_json)
    except orjson.JSONDecodeError:
        return body_json  # not a completion we can read; nothing to scan in it either
    if not isinstance(body, dict):
        return body_json
    slots = _completion_slots(body)
    texts = [obj[key] for obj, key in slots]
    if not any(texts):
        return body_json
    reply = await inspect(texts, 0)
    if reply.verdict is Verdict.BLOCK:
        raise _blocked(reply)
    if reply.verdict is not Verdict.REDACT:
        return body_json
    if len(reply.redacted_texts) != len(texts):
        raise ValueError("policy returned a redaction that does not match the response")
    for (obj, key), text in zip(slots, reply.redacted_texts, strict=True):
        obj[key] = text
    return orjson.dumps(body)


# --- streaming --------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Channel:
    """One stream of text: a choice's content (``tool`` None) or a tool call's arguments."""

    choice: int
    tool: int | None
    pending: str = ""
    #: The tail of what was already sent (original text), left context for the next inspection.
    sent_tail: str = ""


@dataclass(slots=True)
class StreamScanner:
    """Feed it the router's chunks in order; it returns the chunks to send (text re-chunked per window)."""

    inspect: Inspector
    window: int = DEFAULT_WINDOW
    overlap: int = DEFAULT_OVERLAP
    first_window: int = DEFAULT_FIRST_WINDOW
    sequence: int = 0
    _channels: dict[tuple[int, int | None], _Channel] = field(default_factory=dict)
    _template: dict[str, Any] = field(default_factory=dict)
    _numbers: dict[tuple[str, str], int] = field(default_factory=dict)
    _early: list[bytes] = field(default_factory=list)

    @property
    def held(self) -> int:
        """Characters of text received but not yet sent (for tests and metrics)."""
        return sum(len(c.pending) for c in self._channels.values())

    async def feed(self, chunk_json: bytes) -> list[bytes]:
        """The chunks to send now for this router chunk (maybe none: its text is waiting for a window).

        Until the first window has been inspected, nothing is sent (not even the role chunk), so that an answer
        blocked in its first window is still a plain HTTP 403 rather than a stream that ends in an error."""
        out = await self._feed(chunk_json)
        if self.sequence == 0:
            self._early += out
            return []
        if self._early:
            out, self._early = self._early + out, []
        return out

    async def finish(self) -> list[bytes]:
        """The end of the stream: everything pending, inspected and sent."""
        out = self._early + await self._flush()
        self._early = []
        return out

    async def _feed(self, chunk_json: bytes) -> list[bytes]:
        try:
            chunk = orjson.loads(chunk_json)
        except orjson.JSONDecodeError:
            return [*await self._flush(), chunk_json]
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            return [*await self._flush(), chunk_json]
        self._template = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        out: list[bytes] = []
        for choice in chunk["choices"]:
            if isinstance(choice, dict):
                out += await self._choice(choice)
        if chunk.get("usage") is not None or not chunk["choices"]:
            out += await self._flush()
            out.append(orjson.dumps({**chunk, "choices": []}))
        return out

    async def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        """One choice of a chunk: what precedes its text (the role), its text, then what follows (finish_reason)."""
        index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
        delta = dict(choice.get("delta") or {})
        content = delta.pop("content", None)
        calls = delta.pop("tool_calls", None) or ()
        if content is not None and not (isinstance(content, str) and content):
            delta["content"] = content  # "" or null: kept as sent
        out: list[bytes] = []
        if any(v is not None for v in delta.values()):  # a role (OpenAI also sends "refusal": null with it)
            out += await self._flush()
            out.append(self._chunk([{"index": index, "delta": delta}]))
        if isinstance(content, str) and content:
            out += await self._add(self._channel(index, None), content)
        for raw_call in calls:
            if not isinstance(raw_call, dict):
                continue
            call = dict(raw_call)
            function = dict(call.get("function") or {})
            arguments = function.pop("arguments", None)
            tool = call.get("index", 0) if isinstance(call.get("index", 0), int) else 0
            if set(call) - {"index", "function"} or function:  # an id, type or name: a call starts
                call["function"] = {**function, "arguments": ""}
                out += await self._flush()
                out.append(self._chunk([{"index": index, "delta": {"tool_calls": [call]}}]))
            if isinstance(arguments, str) and arguments:
                out += await self._add(self._channel(index, tool), arguments)
        # "logprobs": null rides on every OpenAI chunk: only a real value stops the text from being windowed.
        extra = {k: v for k, v in choice.items() if k not in ("index", "delta", "finish_reason") and v is not None}
        if choice.get("finish_reason") is not None or extra:
            out += await self._flush()
            out.append(
                self._chunk([{**extra, "index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}])
            )
        return out

    async def _flush(self) -> list[bytes]:
        """Inspect and send everything pending (before a non-text chunk, and at the end of the stream)."""
        out: list[bytes] = []
        for channel in self._channels.values():
            if channel.pending:
                out += await self._window(channel, final=True)
        return out

    def _channel(self, choice: int, tool: int | None) -> _Channel:
        key = (choice, tool)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = _Channel(choice, tool)
        return channel

    async def _add(self, channel: _Channel, text: str) -> list[bytes]:
        channel.pending += text
        window = self.window if channel.sent_tail else min(self.first_window, self.window)
        if len(channel.pending) < window + self.overlap:
            return []
        return await self._window(channel, final=False)

    async def _window(self, channel: _Channel, *, final: bool) -> list[bytes]:
        pending = channel.pending
        context = channel.sent_tail
        reply = await self.inspect([context + pending], self.sequence)
        self.sequence += 1
        if reply.verdict is Verdict.BLOCK:
            raise _blocked(reply)
        offset = len(context)
        findings = [
            (f.start - offset, f.end - offset, f.type, f.action)
            for f in reply.findings
            if f.end > offset  # wholly inside the context: already handled
        ]
        cut = len(pending) if final else _cut(pending, self.overlap, findings)
        if cut <= 0:
            return []
        sent = pending[:cut]
        redact = sorted(
            (max(s, 0), min(e, cut), kind, pending[max(s, 0) : e])
            for s, e, kind, action in findings
            if action is Action.REDACT and s < cut
        )
        out_text = self._redacted(sent, redact) if reply.verdict is Verdict.REDACT else sent
        channel.pending = pending[cut:]
        channel.sent_tail = (channel.sent_tail + sent)[-self.overlap :]
        return [self._text_chunk(channel, out_text)] if out_text else []

    def _redacted(self, text: str, spans: list[tuple[int, int, str, str]]) -> str:
        parts: list[str] = []
        at = 0
        for start, end, kind, value in spans:
            if start < at:
                start = at  # overlapping findings: the earlier placeholder already covers the overlap
            if end <= start:
                continue
            parts.append(text[at:start])
            number = self._numbers.setdefault((kind, value), 1 + sum(1 for k, _ in self._numbers if k == kind))
            parts.append(f"[{_label(kind)}_{number}]")
            at = end
        parts.append(text[at:])
        return "".join(parts)

    def _text_chunk(self, channel: _Channel, text: str) -> bytes:
        delta: dict[str, Any]
        if channel.tool is None:
            delta = {"content": text}
        else:
            delta = {"tool_calls": [{"index": channel.tool, "function": {"arguments": text}}]}
        return self._chunk([{"index": channel.choice, "delta": delta, "finish_reason": None}])

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        for choice in choices:
            choice.setdefault("finish_reason", None)
        return orjson.dumps({**self._template, "object": "chat.completion.chunk", "choices": choices})


def _label(kind: str) -> str:
    """The placeholder's label for a finding type: ``email`` → ``EMAIL``, ``custom:employee_id`` → ``EMPLOYEE_ID``."""
    return _NOT_LABEL.sub("_", kind.rpartition(":")[2].upper()).strip("_") or "REDACTED"


def _cut(pending: str, overlap: int, findings: list[tuple[int, int, str, Action]]) -> int:
    """Where the part to send ends: at most ``len - overlap``, at a whitespace, never inside a finding."""
    limit = len(pending) - overlap
    cut = limit
    for i in range(limit, 0, -1):
        if _WHITESPACE.match(pending, i - 1):
            cut = i
            break
    for _ in range(len(findings) + 1):  # each pass moves the cut past or before one crossing finding
        crossing = [(s, e) for s, e, _kind, _action in findings if s < cut < e]
        if not crossing:
            break
        start = min(s for s, _e in crossing)
        cut = start if start > 0 else max(e for _s, e in crossing)
    return cut
