"""OpenAI's legacy ``POST /v1/completions`` at ingress's edge, translated to and from the chat request.

Why translate: as for Messages and Responses, every request then takes the one authorized, inspected, routed,
metered and billed path. The prompt becomes one user message, so a chat model answers it (true text-completion
models are no longer offered by the providers in the catalogue). One prompt per request: a list of several
prompts (several completions) and token-array prompts are refused, as are ``echo``, ``best_of`` > 1, ``logprobs``
and ``suffix`` (the chat path cannot produce them). ``max_tokens`` defaults to 16, as OpenAI's.

Pure: no I/O. Request: :func:`parse_completions_request`; answer: :func:`completion_from_chat`; stream:
:func:`completion_chunk` per chat chunk (``object: text_completion``, ``choices[].text``), the usage chunk
(``choices: []``) when ``stream_options.include_usage`` asks for it, then ``[DONE]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from .domain import Usage
from .errors import InvalidRequest
from .json_depth import load_object

__all__ = ["CompletionsRequest", "completion_chunk", "completion_from_chat", "parse_completions_request"]

#: Copied onto the chat request as they are (the chat path and the router validate them).
PASSED = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed", "user", "logit_bias",
          "stream", "stream_options", "n")
REFUSED = {"echo": "echo", "suffix": "suffix", "logprobs": "logprobs"}
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class CompletionsRequest:
    model: str
    stream: bool
    chat_body: dict[str, Any]


def parse_completions_request(raw: bytes) -> CompletionsRequest:
    """Validate a ``POST /v1/completions`` body and translate it. 400 on anything wrong or unsupported."""
    body = load_object(raw)
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string", param="model", code="invalid_value")
    for name in REFUSED:
        if body.get(name) not in (None, False, ""):
            raise InvalidRequest(f"'{name}' is not supported by the gateway's completions endpoint", param=name,
                                 code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest("'best_of' greater than 1 is not supported", param="best_of",
                             code="unsupported_parameter")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequest("You must provide a prompt parameter", param="prompt", code="missing_required_parameter")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be one string: several prompts and token-array prompts are not "
                             "supported by the gateway", param="prompt", code="unsupported_parameter")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    chat: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens  # validated by parse_chat_request
    for name in PASSED:
        if body.get(name) is not None:
            chat[name] = body[name]
    return CompletionsRequest(model=model, stream=body.get("stream") is True, chat_body=chat)


def _id(value: object, fallback: str) -> str:
    text = str(value or "") or fallback
    return "cmpl-" + text.removeprefix("chatcmpl-")


def completion_from_chat(completion: bytes, request: CompletionsRequest, request_id: str, usage: Usage | None) -> bytes:
    """A ``chat.completion`` body as a ``text_completion``; ``usage``: what was billed."""
    body = orjson.loads(completion)
    choices = []
    for i, choice in enumerate(body.get("choices") or ()):
        message = choice.get("message") or {}
        text = message.get("content")
        choices.append({"text": text if isinstance(text, str) else "", "index": choice.get("index", i),
                        "logprobs": None, "finish_reason": choice.get("finish_reason") or "stop"})
    created = body.get("created")
    u = usage or Usage()
    return orjson.dumps({
        "id": _id(body.get("id"), request_id), "object": "text_completion",
        "created": created if isinstance(created, int) else int(time.time()),
        "model": str(body.get("model") or request.model), "choices": choices,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "total_tokens": u.prompt_tokens + u.completion_tokens},
    })


def completion_chunk(raw: bytes, request: CompletionsRequest, request_id: str) -> bytes | None:
    """One ``chat.completion.chunk`` as a ``text_completion`` chunk (None for one with nothing to say)."""
    try:
        chunk = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict):
        return None
    choices = []
    for i, choice in enumerate(chunk.get("choices") or ()):
        delta = choice.get("delta") or {}
        text = delta.get("content")
        finish = choice.get("finish_reason")
        if not (isinstance(text, str) and text) and not finish:
            continue
        choices.append({"text": text if isinstance(text, str) else "", "index": choice.get("index", i),
                        "logprobs": None, "finish_reason": finish})
    if not choices:
        return None
    created = chunk.get("created")
    return orjson.dumps({"id": _id(chunk.get("id"), request_id), "object": "text_completion",
                         "created": created if isinstance(created, int) else int(time.time()),
                         "model": str(chunk.get("model") or request.model), "choices": choices})
