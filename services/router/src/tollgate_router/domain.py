"""The router's model: which provider serves a public model name, and the exact usage an upstream reported.

Pure (no I/O): the catalogue is built once from operator configuration and only read afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest, InvalidUsage, ModelNotFound

__all__ = [
    "MAX_TOKEN_COUNT",
    "STRATEGIES",
    "Catalogue",
    "Completion",
    "ModelEntry",
    "Provider",
    "Route",
    "StreamEnded",
    "Usage",
    "UsageReader",
    "parse_request",
]


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream endpoint and the operator's key for it (kept out of ``repr`` so it cannot reach a log)."""

    name: str
    kind: str
    base_url: str
    api_key: str = field(default="", repr=False)
    #: Per-kind settings from the operator's file (e.g. Azure's ``api_version``, Anthropic's ``anthropic_version``).
    options: Mapping[str, str] = field(default_factory=dict)
    #: Where the provider processes requests (e.g. ``eu``, ``us``); deployments inherit it unless they say.
    region: str = ""
    #: The provider's own upstream timeout; ``None``: the router's ``ROUTER_UPSTREAM_TIMEOUT_SECONDS``.
    timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One deployment of a public model: a provider, its name for the model, and how routing weighs it."""

    model: str
    provider: Provider
    upstream_model: str
    owned_by: str
    #: Unique in the catalogue (``<model>/<provider>`` unless the operator names it); breakers and latency keyed by it.
    deployment: str = ""
    weight: int = 1
    #: Lower is tried first by the ``priority`` strategy.
    priority: int = 0
    region: str = ""
    #: Upstream price per million tokens in nano-units of the catalogue's currency; ``None``: unknown.
    input_price_per_mtok_nanos: int | None = None
    output_price_per_mtok_nanos: int | None = None
    #: ``None``: the provider's timeout, else the router's.
    timeout_seconds: float | None = None
    #: What the model does (:data:`MODES`): a chat deployment never takes an embedding call, nor the reverse.
    mode: str = "chat"

    @property
    def name(self) -> str:
        """The deployment's name (``deployment``, or ``<model>/<provider>``)."""
        return self.deployment or f"{self.model}/{self.provider.name}"


#: A model's kind of call, as LiteLLM's ``model_info.mode``: chat completions, or embeddings.
MODES = ("chat", "embedding")

#: Routing strategies a model (or the catalogue) may default to; see :mod:`tollgate_router.routing`.
STRATEGIES = ("priority", "weighted", "latency", "price")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A public model: its deployments in catalogue order, the other names it answers to, its default strategy."""

    name: str
    deployments: tuple[Route, ...]
    owned_by: str
    aliases: tuple[str, ...] = ()
    strategy: str = "priority"


class Catalogue:
    """Public model name (or alias) → its deployments; the only source of truth for what a caller may ask for."""

    def __init__(
        self,
        routes: Iterable[Route],
        *,
        aliases: Mapping[str, str] | None = None,
        strategies: Mapping[str, str] | None = None,
        default_strategy: str = "priority",
        currency: str = "USD",
    ) -> None:
        grouped: dict[str, list[Route]] = {}
        for route in routes:
            grouped.setdefault(route.model, []).append(route)
        alias_map = dict(aliases or {})
        by_target: dict[str, list[str]] = {}
        for alias, target in alias_map.items():
            by_target.setdefault(target, []).append(alias)
        self.default_strategy = default_strategy
        self.currency = currency
        self._models: dict[str, ModelEntry] = {
            name: ModelEntry(
                name,
                tuple(deployments),
                deployments[0].owned_by,
                tuple(sorted(by_target.get(name, ()))),
                (strategies or {}).get(name, default_strategy),
            )
            for name, deployments in grouped.items()
        }
        self._aliases = {a: t for a, t in alias_map.items() if t in self._models}

    def entry(self, model: str) -> ModelEntry:
        """The model a public name or alias designates; :class:`ModelNotFound` otherwise."""
        found = self._models.get(model) or self._models.get(self._aliases.get(model, ""))
        if found is None:
            raise ModelNotFound(f"The model '{model}' does not exist or is not served by this gateway.")
        return found

    def resolve(self, model: str) -> Route:
        """The model's first deployment (in catalogue order)."""
        return self.entry(model).deployments[0]

    def models(self) -> list[ModelEntry]:
        return sorted(self._models.values(), key=lambda m: m.name)

    def routes(self) -> list[Route]:
        """Every deployment, by model name then catalogue order."""
        return [route for entry in self.models() for route in entry.deployments]

    def providers(self) -> list[Provider]:
        seen: dict[str, Provider] = {}
        for route in self.routes():
            seen.setdefault(route.provider.name, route.provider)
        return sorted(seen.values(), key=lambda p: p.name)

    def __len__(self) -> int:
        return len(self._models)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reported them (cached ⊂ prompt, reasoning ⊂ completion, as OpenAI's).

    ``cache_write_tokens`` (Anthropic's ``cache_creation_input_tokens``) are prompt tokens the provider wrote to
    its cache, also inside ``prompt_tokens`` and apart from the cache reads: they are billed at their own price."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any]) -> Usage:
        """Read OpenAI's ``usage`` object; bad numbers are an upstream fault, since billing depends on them."""
        count = UsageReader()
        prompt = count(usage.get("prompt_tokens"), "prompt_tokens")
        completion = count(usage.get("completion_tokens"), "completion_tokens")
        total = usage.get("total_tokens")
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        return count.usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion if total is None else count(total, "total_tokens"),
            cached_prompt_tokens=count(prompt_details.get("cached_tokens"), "prompt_tokens_details.cached_tokens")
            if isinstance(prompt_details, Mapping)
            else 0,
            reasoning_tokens=count(
                completion_details.get("reasoning_tokens"), "completion_tokens_details.reasoning_tokens"
            )
            if isinstance(completion_details, Mapping)
            else 0,
        )


#: The largest token count the events and every table downstream hold (protobuf int64, BIGINT).
MAX_TOKEN_COUNT = 2**63 - 1


class UsageReader:
    """Reads the counts of one provider usage object: each must be an integer in [0, 2^63) (missing is 0).

    A bad count is noted and read as 0, so :meth:`usage` can still report the good ones: it raises
    :class:`~tollgate_router.errors.InvalidUsage` (an upstream error, never an unknown exception at the protobuf
    boundary) carrying them, and the attempt records what is known.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, value: Any, key: str) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKEN_COUNT:
            shown = (
                repr(value) if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__
            )
            self.problems.append(f"usage.{key}: {shown[:40]}")
            return 0
        return value

    def usage(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        total_tokens: int,
        cached_prompt_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Usage:
        """The usage, or :class:`InvalidUsage` when a count was bad or a sum of good ones overflowed."""
        counts = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total_tokens,
            "cached_prompt_tokens": cached_prompt_tokens,
            "reasoning_tokens": reasoning_tokens,
            "cache_write_tokens": cache_write_tokens,
        }
        for key, value in counts.items():
            if value > MAX_TOKEN_COUNT:  # a sum of counts that were each in range
                self.problems.append(f"usage.{key}: beyond 2^63")
                counts[key] = 0
        usage = Usage(**counts)
        if self.problems:
            raise InvalidUsage(f"The upstream reported an invalid {', '.join(self.problems)}.", usage)
        return usage


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished non-streaming call: the upstream's body, unchanged, and what it reported."""

    body_json: bytes
    usage: Usage
    provider: str
    upstream_model: str
    upstream_request_id: str
    #: The public catalogue model served (set by the application from the route; adapters leave it empty).
    model: str = ""
    #: False when the upstream reports no usage at all (Gemini's batchEmbedContents): the caller counts it.
    usage_reported: bool = True


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The last event of a stream, after every chunk: the exact usage the upstream reported."""

    usage: Usage
    provider: str
    upstream_model: str
    upstream_request_id: str
    #: The public catalogue model served (set by the application from the route).
    model: str = ""


def parse_request(body: Any, model: str) -> tuple[str, dict[str, Any]]:
    """The public model name and the request body; ``model`` (the RPC field) wins over the body's own."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = model or body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("You must provide a model parameter.")
    return name, body
