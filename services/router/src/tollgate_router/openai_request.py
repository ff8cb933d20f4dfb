"""Reading an OpenAI chat request, for the adapters that translate it to another wire format.

What a provider cannot honour is an :class:`~tollgate_router.errors.InvalidRequest` (400), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .errors import InvalidRequest

__all__ = [
    "data_url",
    "functions",
    "max_tokens",
    "messages",
    "number",
    "reject_unsupported",
    "stop_sequences",
    "text_of",
    "tool_arguments",
    "tool_choice",
]


def _present(body: Mapping[str, Any], key: str) -> bool:
    """Set to something other than OpenAI's own default (so ``"seed": null`` or ``"n": 1`` is harmless)."""
    value = body.get(key)
    defaults: dict[str, Any] = {
        "n": 1,
        "logprobs": False,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "parallel_tool_calls": True,
    }
    if value is None:
        return False
    return not (key in defaults and value == defaults[key])


def reject_unsupported(body: Mapping[str, Any], unsupported: Mapping[str, str], provider_kind: str) -> None:
    """A 400 naming the first parameter of ``unsupported`` (name → why) the request sets."""
    for key, why in unsupported.items():
        if _present(body, key):
            raise InvalidRequest(f"The parameter '{key}' is not supported for {provider_kind} models: {why}", param=key)


def max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens``, else the older ``max_tokens``; a positive integer or absent."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"Invalid '{key}': expected a positive integer, got {value!r}.", param=key)
        return value
    return None


def stop_sequences(body: Mapping[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("Invalid 'stop': expected a string or a list of strings.", param="stop")


def number(body: Mapping[str, Any], key: str, *, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"Invalid '{key}': expected a number in [{low:g}, {high:g}] for this model.", param=key)
    return value


def text_of(content: Any, where: str) -> str:
    """The text of a message content: a string, or a list of ``text`` parts joined; else a 400."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"Invalid '{where}': only text parts are supported here.", param=where)
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"Invalid '{where}': expected a string or a list of parts.", param=where)


def data_url(url: str, where: str) -> tuple[str, str] | None:
    """``(media_type, base64)`` of a ``data:<type>;base64,<data>`` URL, or ``None`` for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise InvalidRequest(f"Invalid '{where}': a data URL must be 'data:<media type>;base64,<data>'.", param=where)
    return media_type, data


def tool_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """A tool call's ``function.arguments`` (a JSON string of an object) as the object."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise InvalidRequest(f"Invalid '{where}': expected a JSON string.", param=where)
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"Invalid '{where}': not valid JSON.", param=where) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid '{where}': expected a JSON object.", param=where)
    return value


def functions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of ``tools`` (only function tools exist in chat completions)."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid 'tools': expected an array.", param="tools")
    result = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"Invalid 'tools[{index}]': expected a function tool with a name.",
                                 param=f"tools[{index}]")
        result.append(function)
    return result


def tool_choice(body: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """``tool_choice`` as ``(mode, function name)``: mode is ``auto``, ``none``, ``required`` or ``function``."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return str(choice), None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return "function", function["name"]
    raise InvalidRequest("Invalid 'tool_choice': expected 'auto', 'none', 'required' or a named function.",
                         param="tool_choice")


def messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"Invalid 'messages[{index}]': expected an object with a 'role'.",
                                 param=f"messages[{index}]")
    return value
