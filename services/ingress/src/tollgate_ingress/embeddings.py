"""An embeddings request, end to end: the chat path's hold and policy (see :mod:`tollgate_ingress.embeddings_wire`),
then router ``Embed``, then exactly one ``UsageRecorded`` (input tokens only) that closes the hold.
"""

from __future__ import annotations

from dataclasses import replace

import orjson

from .chat import ChatCompletions
from .domain import Outcome, Usage, parse_chat_request
from .embeddings_wire import EmbeddingsRequest
from .errors import ServiceUnavailable

__all__ = ["create_embeddings"]


def _redacted(request: EmbeddingsRequest, forwarded: bytes, original: bytes) -> list[str] | None:
    """The policy's redacted texts when it rewrote the prompt, else None (the inputs go as sent)."""
    if forwarded == original:
        return None
    messages = orjson.loads(forwarded).get("messages") or []
    texts = [m.get("content") for m in messages]
    if len(texts) != len(request.inputs) or not all(isinstance(t, str) for t in texts):
        raise ServiceUnavailable("policy returned a redaction that does not match the input", code="policy_error")
    return texts


async def create_embeddings(
    chat: ChatCompletions, api_key: str, request_id: str, request: EmbeddingsRequest, tags_header: str | None
) -> bytes:
    """The upstream's OpenAI embeddings body, as it came; billed once whatever happens after the hold."""
    chat_request = parse_chat_request(orjson.dumps(request.chat_body()), tags_header)
    prepared = await chat.prepare(api_key, request_id, chat_request)
    settlement = prepared.settlement
    try:
        body = request.upstream_body(_redacted(request, prepared.body_json, chat_request.raw))
        embedded = await chat.router.embed(replace(prepared.route(), body_json=body))
    except BaseException as exc:
        settlement.close_failed(exc, prepared.prompt_tokens)
        raise
    finally:
        prepared.release()  # the key's concurrency place (tollgate_ingress.admission)
    served = embedded.served
    tokens = served.usage.prompt_tokens
    body_json = embedded.body_json
    if embedded.usage_unreported:
        # Gemini's batchEmbedContents reports no token count: bill the tokenizer's count of the texts sent (the
        # count the hold was sized on, less the chat formula's per-message overhead), and show it in the answer.
        sent = orjson.loads(body).get("input")
        tokens = sum(chat.counter.text(t) if isinstance(t, str) else len(t)
                     for t in ([sent] if isinstance(sent, str) else sent))
        answer = orjson.loads(body_json)
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        body_json = orjson.dumps(answer)
    settlement.close(
        Outcome.SUCCEEDED,
        Usage(prompt_tokens=tokens, total_tokens=tokens),
        provider=served.provider,
        upstream_model=served.upstream_model,
        upstream_request_id=served.upstream_request_id,
        model=served.model,
    )
    return body_json
