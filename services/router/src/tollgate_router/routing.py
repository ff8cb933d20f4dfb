"""Which deployments a request may try, and in what order: strategies, policy constraints, caller overrides.

Pure (no I/O, no clock): :func:`plan` turns a catalogue, a request's public model, the policy's constraints and
the caller's OpenRouter-style overrides into an ordered list of candidate deployments; the application layer
walks it (retries, fallback, breakers). Randomness comes from an injected :class:`random.Random`.

Order of filters, strictest first, so a caller can never loosen what policy decided:

1. ``models``: the requested model, then the caller's ``models`` fallback list (duplicates dropped), cut to the
   policy's ``allowed_models`` and to ``authorized_models`` (the catalogue models the caller placed a hold for:
   a model is served only when its public catalogue name is in that list, so a fallback or an alias can never
   reach a model that was not checked against the key and priced into the hold);
2. per model, deployments cut by the policy's providers (allowed/denied) and regions;
3. then by the caller's ``provider.only`` / ``provider.ignore`` (provider or deployment names) and
   ``provider.max_price`` (a deployment without a known price is excluded when a maximum is given);
4. ordered by ``provider.order`` first (with ``allow_fallbacks: false`` only those are kept; without an order
   only the first), the rest by ``provider.sort`` or the model's strategy.

An unknown model (requested or in ``models``) is :class:`~tollgate_router.errors.ModelNotFound`; nothing left
after the filters is :class:`NoEligibleDeployment` (gRPC FAILED_PRECONDITION, reason ``no_eligible_deployment``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .domain import Catalogue, Route
from .errors import InvalidRequest, RouterError

__all__ = [
    "Constraints",
    "LatencyTracker",
    "NoEligibleDeployment",
    "Overrides",
    "constraints_from",
    "order_by_strategy",
    "plan",
    "split_overrides",
]

NANOS = 1_000_000_000
_SORTS = {"price": "price", "latency": "latency", "throughput": "latency"}


class NoEligibleDeployment(RouterError):
    """Every deployment of the requested models was excluded by policy or by the caller's own overrides."""

    reason = "no_eligible_deployment"


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where policy lets a request go (CompleteRequest.constraints); empty = no limit."""

    allowed_providers: frozenset[str] = frozenset()
    denied_providers: frozenset[str] = frozenset()
    allowed_regions: frozenset[str] = frozenset()
    allowed_models: frozenset[str] = frozenset()
    #: Public catalogue names billing authorized (CompleteRequest.authorized_models); empty = no limit.
    authorized_models: frozenset[str] = frozenset()

    def admits_model(self, name: str) -> bool:
        return not self.allowed_models or name in self.allowed_models

    def authorizes(self, entry_name: str) -> bool:
        """Whether the hold covers this catalogue model: by its public name only, never an alias (the caller
        resolves aliases before it authorizes, so what it checked is what is served)."""
        return not self.authorized_models or entry_name in self.authorized_models

    def admits(self, route: Route) -> bool:
        provider = route.provider.name
        if self.allowed_providers and provider not in self.allowed_providers:
            return False
        if provider in self.denied_providers:
            return False
        return not self.allowed_regions or route.region in self.allowed_regions


@dataclass(frozen=True, slots=True)
class Overrides:
    """The caller's ``provider`` object and ``models`` list (OpenRouter's request fields)."""

    order: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    sort: str | None = None
    max_prompt_nanos: int | None = None
    max_completion_nanos: int | None = None
    only: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"'{where}' must be a list of names.")
    return tuple(value)


def _price(value: Any, where: str) -> int | None:
    """A price per million tokens in currency units (number or decimal string) → nano-units; never via float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"'{where}' must be a number.")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(f"'{where}' must be a number.") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequest(f"'{where}' must be a non-negative number.")
    return int(amount * NANOS)


def split_overrides(body: dict[str, Any]) -> tuple[dict[str, Any], Overrides]:
    """The body without ``provider``/``models`` (never forwarded upstream), and the overrides they carried."""
    if "provider" not in body and "models" not in body:
        return body, Overrides()
    rest = {k: v for k, v in body.items() if k not in ("provider", "models")}
    spec = body.get("provider") or {}
    if not isinstance(spec, dict):
        raise InvalidRequest("'provider' must be an object.")
    unknown = set(spec) - {"order", "allow_fallbacks", "sort", "max_price", "only", "ignore"}
    if unknown:
        raise InvalidRequest(f"'provider' has unsupported fields: {', '.join(sorted(map(str, unknown)))}.")
    allow = spec.get("allow_fallbacks", True)
    if not isinstance(allow, bool):
        raise InvalidRequest("'provider.allow_fallbacks' must be a boolean.")
    sort = spec.get("sort")
    if sort is not None and sort not in _SORTS:
        raise InvalidRequest("'provider.sort' must be one of price, latency, throughput.")
    max_price = spec.get("max_price") or {}
    if not isinstance(max_price, dict) or set(max_price) - {"prompt", "completion"}:
        raise InvalidRequest("'provider.max_price' must be an object with prompt and/or completion.")
    return rest, Overrides(
        order=_names(spec.get("order"), "provider.order"),
        allow_fallbacks=allow,
        sort=_SORTS[sort] if sort else None,
        max_prompt_nanos=_price(max_price.get("prompt"), "provider.max_price.prompt"),
        max_completion_nanos=_price(max_price.get("completion"), "provider.max_price.completion"),
        only=_names(spec.get("only"), "provider.only"),
        ignore=_names(spec.get("ignore"), "provider.ignore"),
        models=_names(body.get("models"), "models"),
    )


class LatencyTracker:
    """Exponentially weighted moving average of each deployment's latency (seconds), fed by live attempts."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._ewma: dict[str, float] = {}

    def observe(self, deployment: str, seconds: float) -> None:
        old = self._ewma.get(deployment)
        self._ewma[deployment] = seconds if old is None else old + self.alpha * (seconds - old)

    def get(self, deployment: str) -> float | None:
        return self._ewma.get(deployment)


def _named(route: Route, names: Iterable[str]) -> bool:
    wanted = set(names)
    return route.provider.name in wanted or route.name in wanted


def _total_price(route: Route) -> int | None:
    if route.input_price_per_mtok_nanos is None or route.output_price_per_mtok_nanos is None:
        return None
    return route.input_price_per_mtok_nanos + route.output_price_per_mtok_nanos


def order_by_strategy(
    routes: Sequence[Route], strategy: str, *, rng: random.Random, latency: LatencyTracker, epsilon: float
) -> list[Route]:
    """``routes`` ordered by one strategy (ties: priority, then catalogue order)."""
    index = {id(r): i for i, r in enumerate(routes)}

    def by_priority(r: Route) -> tuple[int, int]:
        return (r.priority, index[id(r)])

    if strategy == "weighted":
        pool, ordered = list(routes), []
        while pool:  # weighted draw without replacement: the first pick by weight, then the rest likewise
            weights = [max(r.weight, 0) for r in pool]
            if sum(weights) <= 0:
                ordered.extend(sorted(pool, key=by_priority))
                break
            pick = rng.choices(range(len(pool)), weights=weights)[0]
            ordered.append(pool.pop(pick))
        return ordered
    if strategy == "latency":
        # Unmeasured deployments first (they must be measured once); with probability epsilon, a random one first.
        ordered = sorted(routes, key=lambda r: ((latency.get(r.name) or 0.0), *by_priority(r)))
        if len(ordered) > 1 and rng.random() < epsilon:
            ordered.insert(0, ordered.pop(rng.randrange(len(ordered))))
        return ordered
    if strategy == "price":
        return sorted(routes, key=lambda r: (_total_price(r) is None, _total_price(r) or 0, *by_priority(r)))
    return sorted(routes, key=by_priority)


def plan(
    catalogue: Catalogue,
    model: str,
    overrides: Overrides,
    constraints: Constraints,
    *,
    rng: random.Random,
    latency: LatencyTracker,
    epsilon: float = 0.05,
) -> list[Route]:
    """The ordered candidate deployments for a request (see the module's docstring)."""
    names = list(dict.fromkeys((model, *overrides.models)))
    entries = [catalogue.entry(name) for name in names]  # ModelNotFound for any unknown name
    candidates: list[Route] = []
    excluded: dict[str, str] = {}
    for name, entry in zip(names, entries, strict=True):
        if not constraints.admits_model(name) and not constraints.admits_model(entry.name):
            excluded[name] = "not allowed by policy"
            continue
        if not constraints.authorizes(entry.name):
            excluded[name] = "not authorized for this request (not covered by its hold)"
            continue
        routes = [r for r in entry.deployments if constraints.admits(r)]
        if not routes:
            excluded[name] = "no deployment allowed by policy (providers/regions)"
            continue
        routes = _apply_overrides(routes, overrides)
        if not routes:
            excluded[name] = "no deployment matches the request's provider preferences"
            continue
        rest = order_by_strategy(
            [r for r in routes if not _named(r, overrides.order)],
            overrides.sort or entry.strategy,
            rng=rng,
            latency=latency,
            epsilon=epsilon,
        )
        first = [r for p in overrides.order for r in routes if r.provider.name == p or r.name == p]
        ordered = list({r.name: r for r in reversed(first + rest)}.values())[::-1]  # first occurrence wins
        if not overrides.allow_fallbacks:
            ordered = first if first else ordered[:1]
        candidates.extend(ordered)
    if not candidates:
        why = "; ".join(f"'{n}': {reason}" for n, reason in excluded.items())
        raise NoEligibleDeployment(f"No deployment may serve this request ({why}).")
    return candidates


def _apply_overrides(routes: list[Route], overrides: Overrides) -> list[Route]:
    if overrides.only:
        routes = [r for r in routes if _named(r, overrides.only)]
    if overrides.ignore:
        routes = [r for r in routes if not _named(r, overrides.ignore)]
    if overrides.max_prompt_nanos is not None:
        cap = overrides.max_prompt_nanos
        routes = [r for r in routes if r.input_price_per_mtok_nanos is not None and r.input_price_per_mtok_nanos <= cap]
    if overrides.max_completion_nanos is not None:
        cap = overrides.max_completion_nanos
        routes = [
            r for r in routes if r.output_price_per_mtok_nanos is not None and r.output_price_per_mtok_nanos <= cap
        ]
    return routes


def constraints_from(values: Mapping[str, Iterable[str]]) -> Constraints:
    """Constraints from lists (e.g. the protobuf message's repeated fields)."""
    return Constraints(
        frozenset(values.get("allowed_providers", ())),
        frozenset(values.get("denied_providers", ())),
        frozenset(values.get("allowed_regions", ())),
        frozenset(values.get("allowed_models", ())),
        frozenset(values.get("authorized_models", ())),
    )
