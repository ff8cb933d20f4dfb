"""OpenAI's ``POST /v1/embeddings`` request at ingress's edge: validation, the texts policy inspects, the chat
request that carries it through billing and policy, and the body the router forwards. Pure: no I/O.

Why a chat request: the hold (billing ``Authorize``), the DLP verdict (policy ``Inspect``) and the one usage event
are the chat path's, already tested for every way a request can end; an embedding request is given to them as one
user message per input. The hold is then the tokenizer's count of the inputs (plus the chat formula's few tokens
per message, so it errs high) at the model's input price, and nothing for output (an embedding model's output
price is 0 in the price book).

Token-array inputs are decoded with ``cl100k_base`` (the tokenizer of OpenAI's embedding models) so the policy can
read them; when the policy redacts, the redacted texts are forwarded as strings in their place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from .errors import InvalidRequest
from .json_depth import load_object
from .tokens import ENCODING_NAME

__all__ = ["EmbeddingsRequest", "parse_embeddings_request"]

#: OpenAI's limits: inputs per request, and the dimension count no model exceeds.
MAX_INPUTS = 2048
MAX_DIMENSIONS = 65_536
FIELDS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})

EmbeddingInput = str | list[int]


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    #: The inputs as sent: texts or token arrays.
    inputs: list[EmbeddingInput]
    #: The text of each input (token arrays decoded): what the policy inspects.
    texts: list[str]
    body: dict[str, Any]

    def chat_body(self) -> dict[str, Any]:
        """The chat request that carries this one through the hold and the policy (see the module docstring)."""
        out: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": t} for t in self.texts]}
        if self.body.get("user") is not None:
            out["user"] = self.body["user"]
        return out

    def upstream_body(self, redacted: list[str] | None = None) -> bytes:
        """The embeddings body the router forwards: as sent, or with the policy's redacted texts as the input."""
        if redacted is None:
            return orjson.dumps(self.body)
        return orjson.dumps({**self.body, "input": redacted})


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def _inputs(value: Any) -> list[EmbeddingInput]:
    if value is None:
        raise InvalidRequest("You must provide an input parameter", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        items: list[Any] = [value]
    elif _is_tokens(value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise _bad("'input' must be a non-empty string, array of strings, array of token ids or array of token "
                   "arrays", "input")
    if len(items) > MAX_INPUTS:
        raise _bad(f"'input' may hold at most {MAX_INPUTS} items", "input")
    for i, item in enumerate(items):
        if not ((isinstance(item, str) and item) or _is_tokens(item)):
            raise _bad(f"'input[{i}]' must be a non-empty string or a non-empty array of token ids", f"input[{i}]")
    return items


def _decode(items: list[EmbeddingInput]) -> list[str]:
    encoding = tiktoken.get_encoding(ENCODING_NAME)
    texts: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        if max(item) >= encoding.n_vocab:
            raise _bad(f"'input[{i}]' holds token ids outside the cl100k_base vocabulary", f"input[{i}]")
        try:
            texts.append(encoding.decode(item))
        except (KeyError, ValueError):
            raise _bad(f"'input[{i}]' holds token ids outside the cl100k_base vocabulary", f"input[{i}]") from None
    return texts


def parse_embeddings_request(raw: bytes) -> EmbeddingsRequest:
    """Validate a ``POST /v1/embeddings`` body. Every problem is a 400 naming its ``param``."""
    body = load_object(raw)
    for name, value in body.items():
        if name not in FIELDS and value is not None:
            raise InvalidRequest(f"'{name}' is not supported by the embeddings endpoint", param=name,
                                 code="unsupported_parameter")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' must be a non-empty string", "model")
    inputs = _inputs(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or not 1 <= dimensions <= MAX_DIMENSIONS):
        raise _bad("'dimensions' must be a positive integer", "dimensions")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise _bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user")
    return EmbeddingsRequest(model=model, inputs=inputs, texts=_decode(inputs),
                             body={k: v for k, v in body.items() if v is not None})
