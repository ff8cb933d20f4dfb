"""The chat request as ingress understands it: validation, the prompt's text parts, usage. Pure: no I/O.

Ingress reads only what it needs (model, messages, stream flags, output cap, metadata) and forwards the body
otherwise untouched, so every OpenAI field (tools, response_format, …) reaches the router as the client sent it.
Policy redaction is the one rewrite.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from .errors import InvalidRequest
from .json_depth import load_object
from .tool_texts import ToolSlot, redact_tools, tool_slots, tool_text

__all__ = [
    "ChatRequest",
    "Outcome",
    "StreamMeta",
    "Usage",
    "parse_chat_request",
    "usage_chunk",
]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_TAGS = 16
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 512
#: ``X-Tollgate-Tags: team=search, env=prod%2Fblue``: W3C-baggage-like pairs, values percent-decoded.
TAGS_HEADER = "x-tollgate-tags"
MAX_TAGS_HEADER = 4096
_HEADER_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
#: Fallback models a request may list (OpenRouter's ``models``); billing refuses more.
MAX_FALLBACK_MODELS = 16
#: Request fields besides ``messages`` that upstreams bill as prompt tokens (tool and function definitions, a
#: ``json_schema`` response format, a predicted output).
BILLED_EXTRAS = ("tools", "functions", "response_format", "prediction")
#: The largest token count (``max_tokens``, ``max_completion_tokens``, ``n``) accepted: far above any model's
#: cap, far below what overflows a 64-bit price × tokens product downstream.
MAX_TOKEN_COUNT = 2**31 - 1
#: OpenAI's largest ``n``.
MAX_CHOICES = 128


class Outcome(enum.Enum):
    """How an authorized request ended; each value closes the hold in its own way (see events/v1/usage.proto)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    CLIENT_CANCELLED = "client_cancelled"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    #: Prompt tokens written to the provider's cache (inside prompt_tokens, apart from the cache reads).
    cache_write_tokens: int = 0

    def as_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_prompt_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


#: Where one prompt text lives: (message index, content-part index or None for string content).
TextSlot = tuple[int, int | None]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    #: max_completion_tokens or max_tokens; 0 = not given (billing then holds for the model's cap).
    max_output_tokens: int
    tags: dict[str, str]
    #: The request's billed parts beside the messages (tools, functions, response_format, prediction): upstreams
    #: count them as prompt tokens, so the hold does too.
    prompt_extras: list[Any]
    body: dict[str, Any]
    raw: bytes
    slots: list[TextSlot] = field(default_factory=list)
    #: The tool texts DLP scans after the message texts (tool-call arguments, tool definitions: tool_texts.py).
    tool_slots: list[ToolSlot] = field(default_factory=list)
    #: OpenRouter's ``models``: other models the router may fall back to. Each is checked and held for.
    fallback_models: tuple[str, ...] = ()
    #: Both ``max_completion_tokens`` and a different ``max_tokens`` were sent; only the first is forwarded.
    conflicting_caps: bool = False
    #: ``n``: how many choices the upstream generates, each up to the output cap (``usage`` counts them all).
    choices: int = 1

    @property
    def held_output_tokens(self) -> int:
        """The output tokens the hold is sized for: the cap times ``n`` (0 = the model's cap, see
        :meth:`forwarded_body`)."""
        return self.max_output_tokens * self.choices

    @property
    def candidate_models(self) -> list[str]:
        """Every model the request may be served by, as the client named them: ``model``, then ``models``."""
        return list(dict.fromkeys((self.model, *self.fallback_models)))

    def prompt_texts(self) -> list[str]:
        """Every text of the prompt, in order: string contents and ``{"type": "text"}`` parts."""
        out: list[str] = []
        for m, p in self.slots:
            content = self.messages[m]["content"]
            out.append(content if p is None else content[p]["text"])
        return out

    def scanned_texts(self) -> list[str]:
        """What DLP inspects: :meth:`prompt_texts`, then the tool texts (tool-call arguments, tool definitions)."""
        return [*self.prompt_texts(), *(tool_text(self.body, self.messages, s) for s in self.tool_slots)]

    @property
    def scanned_count(self) -> int:
        return len(self.slots) + len(self.tool_slots)

    def forwarded_body(self, redacted: Sequence[str] | None = None, output_cap: int = 0) -> bytes:
        """The body the router gets: as the client sent it, except

        - each scanned text replaced by its ``redacted`` version (same order as :meth:`scanned_texts`);
        - one output cap, the one the hold was sized with: ``max_tokens`` dropped when ``max_completion_tokens``
          (which the hold used) differs from it, and ``output_cap`` (billing's cap for the held model) sent as
          ``max_completion_tokens`` when the client gave none — so the upstream cannot produce more than is held.
          With ``n`` > 1 that cap is shared: each choice gets ``output_cap // n`` (the hold covers one cap).

        The client's objects are copied, never mutated."""
        add_cap = self.max_output_tokens == 0 and output_cap > 0
        if add_cap and output_cap < self.choices:
            raise _invalid(f"'n' of {self.choices} leaves no output tokens per choice within the model's cap of "
                           f"{output_cap}", "n")
        if redacted is None and not add_cap and not self.conflicting_caps:
            return self.raw
        body = dict(self.body)
        if redacted is not None:
            if len(redacted) != self.scanned_count:
                raise ValueError(f"expected {self.scanned_count} redacted texts, got {len(redacted)}")
            body["messages"] = self._redacted_messages(redacted[: len(self.slots)])
            redact_tools(self.body, body, self.tool_slots, redacted[len(self.slots):])
        if self.conflicting_caps:
            del body["max_tokens"]
        if add_cap:
            body["max_completion_tokens"] = output_cap // self.choices
        return orjson.dumps(body)

    def _redacted_messages(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        if len(texts) != len(self.slots):
            raise ValueError(f"expected {len(self.slots)} redacted texts, got {len(texts)}")
        messages = list(self.messages)
        copied: set[int] = set()
        for (m, p), text in zip(self.slots, texts, strict=True):
            if m not in copied:
                message = dict(messages[m])
                if isinstance(message.get("content"), list):
                    message["content"] = list(message["content"])
                messages[m] = message
                copied.add(m)
            if p is None:
                messages[m]["content"] = text
            else:
                messages[m]["content"][p] = {**messages[m]["content"][p], "text": text}
        return messages


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _optional_int(body: dict[str, Any], name: str, minimum: int, maximum: int = MAX_TOKEN_COUNT) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"'{name}' must be an integer", name, "invalid_type")
    if value < minimum:
        raise _invalid(f"'{name}' must be at least {minimum}, got {value}", name)
    if value > maximum:
        raise _invalid(f"'{name}' must be at most {maximum}", name)
    return value


#: OpenAI's documented ranges for the sampling parameters: a value outside them is the client's error (400 here),
#: not something to pass on for the provider to refuse, or worse for a lenient upstream to take.
_NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}


def _check_sampling(body: dict[str, Any]) -> None:
    for name, (low, high) in _NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(f"'{name}' must be a number", name, "invalid_type")
        if not low <= value <= high:
            raise _invalid(f"'{name}' must be between {low:g} and {high:g}, got {value}", name)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63):
        raise _invalid("'seed' must be a 64-bit integer", "seed", "invalid_type")


def _refuse_cost_fields(body: dict[str, Any]) -> None:
    """Fields that change what the operator pays or what the provider keeps, which the price book does not price:
    refused unless they ask for the default (see the README, "Refused fields")."""
    tier = body.get("service_tier")
    if tier is not None and tier != "default":
        raise _invalid("'service_tier' is not supported: Tollgate prices the provider's default tier only; omit it "
                       "or send \"default\"", "service_tier", "unsupported_parameter")
    if body.get("store") not in (None, False):
        raise _invalid("'store' is not supported: Tollgate does not let providers keep completions; omit it or "
                       "send false", "store", "unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise _invalid("'modalities' other than [\"text\"] (audio output) are not supported: the price book has "
                       "no audio prices", "modalities", "unsupported_parameter")
    if body.get("audio") is not None:
        raise _invalid("'audio' (audio output) is not supported: the price book has no audio prices", "audio",
                       "unsupported_parameter")


def _optional_bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(f"'{param or name}' must be a boolean", param or name, "invalid_type")
    return value


def _check_message(i: int, message: object, slots: list[TextSlot]) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _invalid(f"'{where}' must be an object", where, "invalid_type")
    role = message.get("role")
    if not isinstance(role, str):
        raise _invalid(f"'{where}.role' is required and must be a string", f"{where}.role", "invalid_type")
    if role not in ROLES:
        raise _invalid(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", f"{where}.role")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid(f"'{where}.name' must be a string", f"{where}.name", "invalid_type")
    content = message.get("content")
    if isinstance(content, str):
        slots.append((i, None))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _invalid(f"'{pwhere}' must be an object with a string 'type'", pwhere, "invalid_type")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise _invalid(f"'{pwhere}.text' must be a string", f"{pwhere}.text", "invalid_type")
                slots.append((i, j))
    elif content is not None:
        raise _invalid(f"'{where}.content' must be a string or an array of content parts",
                       f"{where}.content", "invalid_type")


def _tags(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _invalid("'metadata' must be an object of string values", "metadata", "invalid_type")
    if len(metadata) > MAX_TAGS:
        raise _invalid(f"'metadata' may hold at most {MAX_TAGS} pairs", "metadata")
    tags: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            continue  # only string values become metering tags; others still travel in the body
        if not key:
            raise _invalid("'metadata' keys must not be empty", "metadata")
        if len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise _invalid(f"'metadata' keys are limited to {MAX_TAG_KEY} characters and values to "
                           f"{MAX_TAG_VALUE}", "metadata")
        tags[key] = value
    return tags


def _header_tags(header: str | None) -> dict[str, str]:
    """The ``X-Tollgate-Tags`` header's pairs: at most 16, keys ``[A-Za-z0-9_.:/-]{1,64}``, values ≤ 512 characters
    after percent-decoding, no control characters (tags end up in exports and reports)."""
    if header is None or not header.strip():
        return {}
    param = "X-Tollgate-Tags"
    if len(header) > MAX_TAGS_HEADER:
        raise _invalid(f"the {param} header is limited to {MAX_TAGS_HEADER} characters", param)
    tags: dict[str, str] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        key, value = key.strip(), unquote(value.strip())
        if not sep or not _HEADER_TAG_KEY.match(key):
            raise _invalid(f"the {param} header must be 'key=value' pairs separated by commas, keys of 1 to "
                           f"{MAX_TAG_KEY} letters, digits or _.:/-", param)
        if len(value) > MAX_TAG_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise _invalid(f"{param} values are limited to {MAX_TAG_VALUE} printable characters", param)
        if key in tags:
            raise _invalid(f"the {param} header names '{key}' twice", param)
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise _invalid(f"the {param} header may hold at most {MAX_TAGS} pairs", param)
    return tags


def _user(body: dict[str, Any]) -> dict[str, str]:
    """OpenAI's ``user`` (an end-user id) becomes the ``user`` tag."""
    user = body.get("user")
    if user is None:
        return {}
    if not isinstance(user, str):
        raise _invalid("'user' must be a string", "user", "invalid_type")
    if len(user) > MAX_TAG_VALUE:
        raise _invalid(f"'user' is limited to {MAX_TAG_VALUE} characters", "user")
    return {"user": user} if user else {}


def _fallback_models(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _invalid("'models' must be an array of model ids", "models", "invalid_type")
    if len(value) > MAX_FALLBACK_MODELS:
        raise _invalid(f"'models' may list at most {MAX_FALLBACK_MODELS} models", "models")
    return tuple(value)


def parse_chat_request(raw: bytes, tags_header: str | None = None) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body (and the ``X-Tollgate-Tags`` header). Every problem becomes a 400
    naming the offending ``param``.

    The usage event's tags are the request's ``metadata`` string pairs, then its ``user`` (as ``user``), then the
    header's pairs, a later source winning on the same key: at most 16 + 1 + 16 pairs, each bounded."""
    body = load_object(raw)

    model = body.get("model")
    if model is None:
        raise _invalid("You must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("'model' must be a non-empty string", "model", "invalid_type")

    messages = body.get("messages")
    if messages is None:
        raise _invalid("You must provide a messages parameter", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _invalid("'messages' must be an array of messages", "messages", "invalid_type")
    if not messages:
        raise _invalid("'messages' must contain at least one message", "messages")
    slots: list[TextSlot] = []
    for i, message in enumerate(messages):
        _check_message(i, message, slots)

    max_completion = _optional_int(body, "max_completion_tokens", 1)
    max_tokens = _optional_int(body, "max_tokens", 1)
    n = _optional_int(body, "n", 1, MAX_CHOICES)
    if n is not None and n > 1 and (max_completion or max_tokens or 0) * n > MAX_TOKEN_COUNT:
        raise _invalid(f"'n' times the output cap must stay within {MAX_TOKEN_COUNT} tokens", "n")

    _check_sampling(body)
    _refuse_cost_fields(body)
    stream = _optional_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options", "invalid_type")
    include_usage = _optional_bool(options or {}, "include_usage", "stream_options.include_usage")

    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        max_output_tokens=max_completion or max_tokens or 0,
        tags={**_tags(body.get("metadata")), **_user(body), **_header_tags(tags_header)},
        prompt_extras=[body[name] for name in BILLED_EXTRAS if body.get(name) is not None],
        body=body,
        raw=raw,
        slots=slots,
        tool_slots=tool_slots(body, messages),
        fallback_models=_fallback_models(body.get("models")),
        conflicting_caps=max_completion is not None and max_tokens is not None and max_completion != max_tokens,
        choices=n or 1,
    )


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What every chunk of one stream shares; the synthesized usage chunk must carry the same values."""

    id: str
    model: str
    created: int
    system_fingerprint: str | None = None

    @classmethod
    def from_chunk(cls, chunk_json: bytes, *, fallback_id: str, fallback_model: str) -> StreamMeta:
        try:
            chunk = orjson.loads(chunk_json)
        except orjson.JSONDecodeError:
            chunk = {}
        if not isinstance(chunk, dict):
            chunk = {}
        created = chunk.get("created")
        fingerprint = chunk.get("system_fingerprint")
        return cls(
            id=str(chunk.get("id") or fallback_id),
            model=str(chunk.get("model") or fallback_model),
            created=created if isinstance(created, int) and not isinstance(created, bool) else int(time.time()),
            system_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        )


def usage_chunk(meta: StreamMeta, usage: Usage) -> bytes:
    """The last chunk OpenAI sends when ``stream_options.include_usage`` is set: no choices, the exact usage."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage.as_openai(),
    }
    if meta.system_fingerprint is not None:
        chunk["system_fingerprint"] = meta.system_fingerprint
    return orjson.dumps(chunk)
