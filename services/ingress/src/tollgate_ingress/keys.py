"""Queries an API key's holder may make about itself: ``/v1/key`` and ``/v1/models``."""

from __future__ import annotations

import time

from tollgate.billing.v1 import billing_service_pb2 as bpb

from .billing_client import BillingClient
from .policy_client import PolicyClient
from .router_client import CatalogueModel, RouterClient

__all__ = ["Keys"]


class Keys:
    #: Cached model lists (one per key: each key's policy may allow different models); the oldest go first.
    MAX_CACHED_LISTS = 1024

    def __init__(
        self, billing: BillingClient, policy: PolicyClient, router: RouterClient, models_ttl: float = 10.0
    ) -> None:
        self.billing = billing
        self.policy = policy
        self.router = router
        self.models_ttl = models_ttl
        self._models: dict[tuple[str, str], tuple[float, list[CatalogueModel]]] = {}

    async def key_info(self, api_key: str) -> bpb.GetKeyInfoResponse:
        return await self.billing.key_info(api_key)

    async def models(self, api_key: str, request_id: str = "") -> list[CatalogueModel]:
        """The catalogue's models this key may use: policy's routing constraints for the key (an inspection with
        no text and no model), applied by the router. Cached per key for ``models_ttl``."""
        info = await self.key_info(api_key)  # authenticates the caller
        cache_key = (info.account_id, info.key_id)
        now = time.monotonic()
        cached = self._models.get(cache_key)
        if cached is not None and now - cached[0] < self.models_ttl:
            return cached[1]
        inspection = await self.policy.inspect(request_id, info.account_id, info.key_id)
        models = await self.router.list_models(inspection.constraints)
        self._models.pop(cache_key, None)
        self._models[cache_key] = (now, models)
        while len(self._models) > self.MAX_CACHED_LISTS:
            del self._models[next(iter(self._models))]
        return models
