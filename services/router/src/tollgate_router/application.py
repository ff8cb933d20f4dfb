"""The router's use cases: complete a chat, stream one, list the catalogue.

The one place that picks a route and an adapter, and so the place where retries and fallback to another
provider will go: adapters only translate, the transport only maps protobuf.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import orjson

from .adapters import ProviderAdapter, StreamEvent
from .domain import Catalogue, Completion, Route, Usage, parse_request
from .errors import InvalidRequest, RouterError, UpstreamUnavailable
from .metrics import UPSTREAM_CALLS, UPSTREAM_SECONDS, UPSTREAM_TOKENS

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
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await adapter.complete(route, body, request_id=request_id, timeout=self._timeout_for(deadline))
        except RouterError as error:
            outcome = error.reason
            raise
        finally:
            _observe(route, "complete", outcome, started)
        _count_tokens(route, result.usage)
        return result

    async def stream_complete(
        self, *, request_id: str, model: str, body_json: bytes, deadline: float | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Chunks, then one ``StreamEnded``; errors before the first chunk are raised before anything is yielded."""
        route, body = self._prepare(model, body_json)
        adapter = self._adapters[route.provider.kind]
        started = time.perf_counter()
        outcome = "cancelled"  # unless the stream ends or fails: the caller went away
        try:
            ended = False
            events = adapter.stream(route, body, request_id=request_id, timeout=self._timeout_for(deadline))
            # aclosing: a caller that goes away mid-stream closes the upstream response at once, not at GC.
            async with aclosing(events):
                async for event in events:
                    if ended:
                        continue  # nothing may follow the end (an adapter bug); drained, not forwarded
                    if isinstance(event, bytes):
                        yield event
                    else:
                        ended = True
                        _count_tokens(route, event.usage)
                        outcome = "ok"
                        yield event
            if not ended:
                raise UpstreamUnavailable(f"The provider '{route.provider.name}' stream ended without usage.")
        except RouterError as error:
            outcome = error.reason
            raise
        finally:
            _observe(route, "stream", outcome, started)

    def list_models(self) -> list[Route]:
        return self.catalogue.routes()


def _observe(route: Route, mode: str, outcome: str, started: float) -> None:
    UPSTREAM_CALLS.labels(route.provider.name, mode, outcome).inc()
    UPSTREAM_SECONDS.labels(route.provider.name, mode).observe(time.perf_counter() - started)


def _count_tokens(route: Route, usage: Usage) -> None:
    UPSTREAM_TOKENS.labels(route.provider.name, "prompt").inc(usage.prompt_tokens)
    UPSTREAM_TOKENS.labels(route.provider.name, "completion").inc(usage.completion_tokens)
