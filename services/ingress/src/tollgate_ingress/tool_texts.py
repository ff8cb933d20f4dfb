"""The tool parts of a chat request that DLP scans beside the message texts, and how a redaction is written back.

Why: only message text was scanned, so a secret in a tool call's ``arguments`` (what the model asked a tool to
do, sent back in the conversation) or in a tool definition (names, descriptions, enum values, examples of its JSON
schema) went upstream unseen. Anthropic's ``tool_use`` blocks and ``tools`` and the Responses API's
``function_call`` items and ``tools`` are translated into these same chat fields before the chat request is parsed
(anthropic_wire.py, responses_wire.py), so this one scan covers the three wire formats.

What is scanned, in this order after the message texts:

- ``messages[m].tool_calls[c].function.arguments`` and the legacy ``messages[m].function_call.arguments``
  (strings, as OpenAI requires: anything else is a 400, never an unscanned value);
- each ``tools[i]`` and legacy ``functions[i]`` definition, as its JSON text.

A redacted argument string replaces the original. A redacted definition is parsed back from its JSON text; when
the redaction broke the JSON (a match spanning a quote), the request is refused rather than sent unredacted. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .errors import InvalidRequest, PermissionDenied

__all__ = ["ToolSlot", "redact_tools", "tool_slots", "tool_text"]

#: Where one tool text lives: (kind, index, call). ``("arguments", m, c)``: message m's tool call c;
#: ``("function_call", m, 0)``; ``("tools", i, 0)`` and ``("functions", i, 0)``: a definition.
ToolSlot = tuple[str, int, int]
_DEFINITIONS = ("tools", "functions")


def _has_arguments(function: object, where: str) -> bool:
    """Whether ``function`` (a tool call's ``function``, or a ``function_call``) carries arguments to scan; 400 when
    they are not text."""
    if not isinstance(function, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where, code="invalid_type")
    arguments = function.get("arguments")
    if arguments is None:
        return False
    if not isinstance(arguments, str):
        raise InvalidRequest(f"'{where}.arguments' must be a string of JSON", param=f"{where}.arguments",
                             code="invalid_type")
    return True


def _call_has_arguments(call: object, where: str) -> bool:
    if not isinstance(call, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where, code="invalid_type")
    return call.get("function") is not None and _has_arguments(call["function"], f"{where}.function")


def tool_slots(body: dict[str, Any], messages: list[dict[str, Any]]) -> list[ToolSlot]:
    """Every tool text of the request (checked messages; ``body`` is the whole request)."""
    slots: list[ToolSlot] = []
    for m, message in enumerate(messages):
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise InvalidRequest(f"'messages[{m}].tool_calls' must be an array", param=f"messages[{m}].tool_calls",
                                     code="invalid_type")
            slots.extend(("arguments", m, c) for c, call in enumerate(calls)
                         if _call_has_arguments(call, f"messages[{m}].tool_calls[{c}]"))
        if message.get("function_call") is not None and _has_arguments(message["function_call"],
                                                                       f"messages[{m}].function_call"):
            slots.append(("function_call", m, 0))
    for kind in _DEFINITIONS:
        definitions = body.get(kind)
        if definitions is None:
            continue
        if not isinstance(definitions, list):
            raise InvalidRequest(f"'{kind}' must be an array", param=kind, code="invalid_type")
        slots.extend((kind, i, 0) for i in range(len(definitions)))
    return slots


def tool_text(body: dict[str, Any], messages: list[dict[str, Any]], slot: ToolSlot) -> str:
    kind, i, c = slot
    if kind == "arguments":
        return str(messages[i]["tool_calls"][c]["function"]["arguments"])
    if kind == "function_call":
        return str(messages[i]["function_call"]["arguments"])
    return orjson.dumps(body[kind][i]).decode()


def redact_tools(original: dict[str, Any], body: dict[str, Any], slots: Sequence[ToolSlot],
                 texts: Sequence[str]) -> None:
    """Write the redacted ``texts`` into ``body`` (a shallow copy of ``original`` whose ``messages`` list is already
    a copy); every object on the way to a changed text is copied, the client's are never mutated."""
    messages: list[dict[str, Any]] = body["messages"]
    copied: set[int] = set()
    for slot, text in zip(slots, texts, strict=True):
        if text == tool_text(original, original["messages"], slot):
            continue
        kind, i, c = slot
        if kind in _DEFINITIONS:
            try:
                definition = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise PermissionDenied(f"The request was blocked by the account's policy: {kind}[{i}] holds data "
                                       "the policy redacts, and it could not be redacted in place.",
                                       code="policy_violation") from None
            if body[kind] is original.get(kind):
                body[kind] = list(body[kind])
            body[kind][i] = definition
            continue
        if i not in copied:
            messages[i] = dict(messages[i])
            copied.add(i)
        message = messages[i]
        if kind == "function_call":
            message["function_call"] = {**message["function_call"], "arguments": text}
            continue
        message["tool_calls"] = calls = list(message["tool_calls"])
        call = calls[c]
        calls[c] = {**call, "function": {**call["function"], "arguments": text}}
