"""Embeddings: ``POST {base}/embeddings`` on OpenAI-compatible deployments (OpenAI, Azure, vLLM, the mock), and
``batchEmbedContents`` on Gemini ones (:mod:`tollgate_router.gemini_embeddings`).

Why a module of its own: an embedding call is routed like a chat call (same catalogue, policy constraints,
``authorized_models``, breakers, retries, fallback and attempt log: :class:`~tollgate_router.application.Router`'s
walk), but it has one wire format and no stream, so it needs neither the chat adapters nor their translation.
Only deployments whose provider speaks OpenAI's embeddings API are candidates; a model with none is the caller's
mistake (``InvalidRequest``), not an outage. The body crosses unchanged but for the model name (the provider's).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .application import Router
from .domain import Completion, Route, Usage
from .errors import UpstreamUnavailable
from .gemini_embeddings import GeminiEmbeddingsAdapter
from .routing import Constraints
from .upstream_http import DEFAULT_LIMITS, UpstreamLimits, post_raw

__all__ = ["EMBEDDING_KINDS", "Embedder", "OpenAIEmbeddingsAdapter"]

#: Provider kinds that serve OpenAI's embeddings API.
EMBEDDING_KINDS = frozenset({"openai", "azure", "gemini"})


class OpenAIEmbeddingsAdapter:
    """Speaks OpenAI's ``POST {base_url}/embeddings`` (Azure: its deployment URL and ``api-key``)."""

    def __init__(self, session: aiohttp.ClientSession, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self._session = session
        self._limits = limits

    @staticmethod
    def _url(route: Route) -> str:
        base = route.provider.base_url.rstrip("/")
        if route.provider.kind != "azure":
            return base + "/embeddings"
        version = route.provider.options.get("api_version", "")
        if not version:
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' has no options.api_version configured.")
        deployment = quote(route.upstream_model, safe="")
        return f"{base}/openai/deployments/{deployment}/embeddings?api-version={quote(version, safe='')}"

    @staticmethod
    def _headers(route: Route, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if route.provider.api_key:
            if route.provider.kind == "azure":
                headers["api-key"] = route.provider.api_key
            else:
                headers["Authorization"] = f"Bearer {route.provider.api_key}"
        if request_id:
            headers["X-Client-Request-Id"] = request_id
        return headers

    async def embed(self, route: Route, body: dict[str, Any], *, request_id: str, timeout: float) -> Completion:
        raw, header_id = await post_raw(
            self._session, route, self._url(route), self._headers(route, request_id),
            {**body, "model": route.upstream_model}, timeout=timeout, request_id_header="x-request-id",
            limits=self._limits,
        )
        try:
            reply = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' answered with invalid JSON.") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("usage"), dict):
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' answered without usage.")
        usage = Usage.from_openai(reply["usage"])
        # An embedding has no output tokens: whatever the upstream says of total_tokens, the bill is the input.
        usage = replace(usage, completion_tokens=0, total_tokens=usage.prompt_tokens)
        return Completion(body_json=raw, usage=usage, provider=route.provider.name,
                          upstream_model=route.upstream_model, upstream_request_id=header_id)


class Embedder:
    """The router's walk over a model's deployments, for an embedding call."""

    def __init__(
        self, router: Router, adapter: OpenAIEmbeddingsAdapter, gemini: GeminiEmbeddingsAdapter | None = None
    ) -> None:
        self.router = router
        self.adapter = adapter
        self.gemini = gemini

    async def embed(
        self,
        *,
        request_id: str,
        model: str,
        body_json: bytes,
        deadline: float | None = None,
        account_id: str = "",
        constraints: Constraints | None = None,
        prompt_tokens_estimate: int = 0,
    ) -> Completion:
        return await self.router.unary(
            self._embed_on, request_id=request_id, model=model, body_json=body_json, deadline=deadline,
            account_id=account_id, constraints=constraints, prompt_tokens_estimate=prompt_tokens_estimate,
            serves=self._serves, none_serves="that provides embeddings",
            mode="embedding",
        )

    def _serves(self, route: Route) -> bool:
        return route.provider.kind in EMBEDDING_KINDS and (route.provider.kind != "gemini" or self.gemini is not None)

    async def _embed_on(self, route: Route, body: dict[str, Any], request_id: str, timeout: float) -> Completion:
        adapter = self.gemini if route.provider.kind == "gemini" and self.gemini is not None else self.adapter
        return await adapter.embed(route, body, request_id=request_id, timeout=timeout)
