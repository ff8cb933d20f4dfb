"""The mock upstream's OpenAI ``POST /v1/embeddings``. DEVELOPMENT ONLY (see :mod:`tollgate_dev.mock_upstream`).

Faithful where billing and the SDKs look: OpenAI's body (``object: list``, ``data[i].object: embedding``,
``index``, ``model``, ``usage.prompt_tokens`` = ``total_tokens``), ``encoding_format`` ``float`` or ``base64``
(little-endian float32, which the openai SDK asks for by default and decodes), ``dimensions`` for the
``text-embedding-3`` models only, and its validation errors (empty input, more than 2048 inputs, more than 8192
tokens in one). Deterministic: each vector is a unit vector drawn from a generator seeded with the SHA-256 of the
model, the dimension count and the input (its text, or its token ids), so the same input always embeds the same;
``prompt_tokens`` counts strings with ``cl100k_base`` and token arrays by their length.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from typing import Any

__all__ = ["EMBEDDING_MODELS", "GEMINI_EMBEDDING_MODELS", "EmbeddingRejected", "batch_embed_problem",
           "batch_embedding_body", "embed", "embedding_body"]

#: Model → its native dimension count (OpenAI's).
EMBEDDING_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
#: Gemini embedding model → its native dimension count.
GEMINI_EMBEDDING_MODELS = {"gemini-embedding-001": 3072, "text-embedding-004": 768}
#: Gemini's most requests in one batchEmbedContents call.
GEMINI_MAX_BATCH = 100
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192


class EmbeddingRejected(ValueError):
    """A request OpenAI would answer with a 400 (``message``, ``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _inputs(value: Any) -> list[str | list[int]]:
    """OpenAI's four input shapes as a list of texts or token arrays."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise EmbeddingRejected("'input' must be a string, an array of strings, or an array of token arrays.", "input")
    if not items:
        raise EmbeddingRejected("'input' must not be empty.", "input")
    if len(items) > MAX_INPUTS:
        raise EmbeddingRejected(f"'input' may hold at most {MAX_INPUTS} items.", "input")
    for i, item in enumerate(items):
        text_ok = isinstance(item, str) and item != ""
        tokens_ok = (isinstance(item, list) and item
                     and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item))
        if not (text_ok or tokens_ok):
            raise EmbeddingRejected(f"'input[{i}]' must be a non-empty string or array of token ids.", "input")
    return items


def _vector(model: str, dimensions: int, item: str | list[int]) -> list[float]:
    key = item if isinstance(item, str) else ",".join(map(str, item))
    seed = hashlib.sha256(f"{model}\x00{dimensions}\x00{key}".encode()).digest()
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Rounded through float32, so the float and base64 encodings carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def embed(body: Any, count_tokens: Any) -> tuple[list[list[float]], int, str]:
    """The vectors, the prompt tokens and the encoding for a request body; :class:`EmbeddingRejected` if bad."""
    if not isinstance(body, dict):
        raise EmbeddingRejected("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise EmbeddingRejected("You must provide a model parameter.", "model")
    native = EMBEDDING_MODELS.get(model)
    if native is None:
        raise EmbeddingRejected(f"The model '{model}' does not support embeddings.", "model")
    items = _inputs(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = native
    elif model == "text-embedding-ada-002":
        raise EmbeddingRejected("This model does not support specifying dimensions.", "dimensions")
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= native:
        raise EmbeddingRejected(f"'dimensions' must be an integer between 1 and {native}.", "dimensions")
    encoding = body.get("encoding_format", "float") or "float"
    if encoding not in ("float", "base64"):
        raise EmbeddingRejected("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    tokens = 0
    for i, item in enumerate(items):
        n = count_tokens(item) if isinstance(item, str) else len(item)
        if n > MAX_INPUT_TOKENS:
            raise EmbeddingRejected(f"'input[{i}]' is {n} tokens, more than the model's {MAX_INPUT_TOKENS}.", "input")
        tokens += n
    return [_vector(model, dimensions, item) for item in items], tokens, str(encoding)


def embedding_body(model: str, vectors: list[list[float]], tokens: int, encoding: str) -> dict[str, Any]:
    """OpenAI's embeddings response."""
    def encoded(vector: list[float]) -> list[float] | str:
        if encoding == "float":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ---- Gemini batchEmbedContents ------------------------------------------------------------------------------------


def batch_embed_problem(model: str, body: Any) -> str | None:
    """The message of Gemini's 400 for a malformed ``batchEmbedContents`` body, or ``None``."""
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list) or not body["requests"]:
        return "* BatchEmbedContentsRequest.requests: requests is not specified"
    if len(body["requests"]) > GEMINI_MAX_BATCH:
        return f"* BatchEmbedContentsRequest.requests: at most {GEMINI_MAX_BATCH} requests can be in one batch"
    native = GEMINI_EMBEDDING_MODELS[model]
    for i, one in enumerate(body["requests"]):
        where = f"* BatchEmbedContentsRequest.requests[{i}]"
        if not isinstance(one, dict) or one.get("model") != f"models/{model}":
            return f"{where}.model: the model in each request must match the model of the batch (models/{model})"
        parts = (one.get("content") or {}).get("parts") if isinstance(one.get("content"), dict) else None
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                               for p in parts):
            return f"{where}.content.parts: text parts are required"
        size = one.get("outputDimensionality")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= native):
            return f"{where}.output_dimensionality: must be between 1 and {native}"
    return None


def batch_embedding_body(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's answer: ``embeddings[i].values`` and nothing else (the API reports no token count)."""
    native = GEMINI_EMBEDDING_MODELS[model]
    out = []
    for one in body["requests"]:
        text = "".join(p["text"] for p in one["content"]["parts"])
        out.append({"values": _vector(model, one.get("outputDimensionality") or native, text)})
    return {"embeddings": out}
