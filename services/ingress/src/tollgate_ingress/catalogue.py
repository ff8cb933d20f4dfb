"""The router catalogue's aliases, cached: a request's candidate models are resolved to public catalogue names
before billing checks and prices them.

Why: the router serves a catalogue model, never an alias, and it serves only a model ingress authorized by its
catalogue name (``CompleteRequest.authorized_models``). So an alias must be resolved before the hold, or the key's
allow-list and the price book would be asked about a name that is not what gets served. When the catalogue cannot
be read (router down), names pass unresolved: billing prices them as given and the router refuses an alias that
was not resolved (fail closed), so a stale cache can refuse a request, never bill the wrong model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from .errors import IngressError
from .router_client import RouterClient

__all__ = ["ModelDirectory"]

log = logging.getLogger(__name__)


class ModelDirectory:
    """alias → public model name, from the router's ``ListModels``; refreshed at most every ``ttl`` seconds (on a
    failure, retried after ``retry`` seconds). Until the first load succeeds a request waits for it; after that a
    stale map is refreshed in the background, so no request waits on the router for it."""

    def __init__(
        self,
        router: RouterClient,
        *,
        ttl: float = 30.0,
        retry: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.ttl = ttl
        self.retry = retry
        self.timeout = timeout
        self.clock = clock
        self._aliases: dict[str, str] = {}
        self._models: frozenset[str] = frozenset()
        self._loaded = False
        self._next_refresh = float("-inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    async def resolve(self, names: Iterable[str]) -> list[str]:
        """``names`` with each alias replaced by its model, duplicates dropped, order kept."""
        if self.clock() >= self._next_refresh:
            if not self._loaded:
                await self._refresh()
            elif self._background is None or self._background.done():
                self._background = asyncio.create_task(self._refresh(), name="model-directory-refresh")
        aliases = self._aliases
        return list(dict.fromkeys(aliases.get(n, n) for n in names))

    def unknown(self, names: Iterable[str]) -> str | None:
        """The first of ``names`` (already resolved) the router's catalogue does not serve, or None, also when the
        catalogue has not been read: billing's ``model_not_priced`` then says "no price", which ingress turns
        into OpenAI's 404 ``model_not_found`` for a model that does not exist at all."""
        if not self._loaded:
            return None
        return next((n for n in names if n not in self._models), None)

    async def _refresh(self) -> None:
        async with self._lock:
            if self.clock() < self._next_refresh:
                return  # another caller refreshed while this one waited
            try:
                models = await self.router.list_models(timeout=self.timeout)
            except IngressError as exc:
                log.warning("router catalogue unavailable; model aliases unresolved", extra={"code": exc.code})
                self._next_refresh = self.clock() + self.retry
                return
            self._aliases = {alias: m.id for m in models for alias in m.aliases}
            self._models = frozenset(m.id for m in models)
            self._loaded = True
            self._next_refresh = self.clock() + self.ttl
