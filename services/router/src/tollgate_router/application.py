"""The router's use cases: complete a chat, stream one, list the catalogue.

The one place that picks a route and an adapter, and so the place where retries and fallback to another
provider will go: adapters only translate, the transport only maps protobuf.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from .adapters import ProviderAdapter, StreamEvent
from .domain import Catalogue, Completion, Route, parse_request
from .errors import InvalidRequest, UpstreamUnavailable

__all__ = ["Router"]


class Router:
    def __init__(
        self, catalogue: Catalogue, adapters: Mapping[str, ProviderAdapter], *, upstream_timeout: float
    ) -> None:
        """``adapters`` by provider kind (e.g. ``openai``); every kind in the catalogue must have one."""
        missing = {p.kind for p in catalogue.providers()} - set(adapters)
        if missing:
            raise ValueError(f"no adapter for provider kinds: {', '.join(sorted(missing))}")
        self.catalogue = catalogue
        self._adapters = dict(adapters)
        self._timeout = upstream_timeout

    def _prepare(self, model: str, body_json: bytes) -> tuple[Route, dict[str, Any]]:
        try:
            raw = orjson.loads(body_json)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body is not valid JSON.") from None
        name, body = parse_request(raw, model)
        return self.catalogue.resolve(name), body

    def _timeout_for(self, deadline: float | None) -> float:
        """The configured upstream timeout, shortened to the caller's own gRPC deadline when that comes first."""
        return self._timeout if deadline is None else max(0.001, min(self._timeout, deadline))

    async def complete(
        self, *, request_id: str, model: str, body_json: bytes, deadline: float | None = None
    ) -> Completion:
        route, body = self._prepare(model, body_json)
        adapter = self._adapters[route.provider.kind]
        return await adapter.complete(route, body, request_id=request_id, timeout=self._timeout_for(deadline))

    async def stream_complete(
        self, *, request_id: str, model: str, body_json: bytes, deadline: float | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Chunks, then one ``StreamEnded``; errors before the first chunk are raised before anything is yielded."""
        route, body = self._prepare(model, body_json)
        adapter = self._adapters[route.provider.kind]
        ended = False
        async for event in adapter.stream(route, body, request_id=request_id, timeout=self._timeout_for(deadline)):
            if ended:
                break
            ended = not isinstance(event, bytes)
            yield event
        if not ended:
            raise UpstreamUnavailable(f"The provider '{route.provider.name}' stream ended without usage.")

    def list_models(self) -> list[Route]:
        return self.catalogue.routes()
