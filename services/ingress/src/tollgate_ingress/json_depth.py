"""A bound on how deeply a request body may nest, checked once where each route parses its JSON.

Why: orjson reads up to 1,024 levels, but it writes at most 255, Python's ``json`` and any recursive walk stop
near 1,000, and the router's adapters walk the body recursively. A body nested deeper than anything an API needs
(tool schemas are a few levels deep) would pass ingress and then fail further on: a 500 in a translator, or a 502
blaming the provider. Refused here instead, as the client's 400. Pure.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import InvalidRequest

__all__ = ["MAX_JSON_DEPTH", "TOO_DEEP", "load_object", "nests_too_deep"]

#: The deepest nesting of objects and arrays a request body may have (the body itself is level 1). Far above any
#: OpenAI or Anthropic request (strict JSON schemas allow 5 levels of objects), well below orjson's 255 on output.
MAX_JSON_DEPTH = 128
#: The 400's message.
TOO_DEEP = f"The request body nests deeper than {MAX_JSON_DEPTH} levels of objects and arrays"


def nests_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) has containers more than ``limit`` levels deep. Iterative, one visit per
    container: a chat body has a few dozen."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def load_object(raw: bytes) -> dict[str, Any]:
    """An OpenAI-format request body (chat, completions, embeddings) parsed, or its 400: ``invalid_json``,
    ``invalid_type`` (not an object) or ``nesting_too_deep``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_type")
    if nests_too_deep(body):
        raise InvalidRequest(TOO_DEEP, code="nesting_too_deep")
    return body
