"""The router's model: which provider serves a public model name, and the exact usage an upstream reported.

Pure (no I/O): the catalogue is built once from operator configuration and only read afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest, ModelNotFound, UpstreamUnavailable

__all__ = [
    "SUPPORTED_KINDS",
    "Catalogue",
    "Completion",
    "Provider",
    "Route",
    "StreamEnded",
    "Usage",
    "parse_request",
]

#: Wire formats the router speaks; ``openai`` covers every OpenAI-compatible provider (OpenAI, DeepSeek, Kimi,
#: Qwen, GLM, MiniMax, OpenRouter, vLLM…), ``azure`` is OpenAI's format with Azure's URLs and ``api-key`` header.
SUPPORTED_KINDS = ("openai", "azure", "anthropic", "gemini")


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream endpoint and the operator's key for it (kept out of ``repr`` so it cannot reach a log)."""

    name: str
    kind: str
    base_url: str
    api_key: str = field(default="", repr=False)
    #: Per-kind settings from the operator's file (e.g. Azure's ``api_version``, Anthropic's ``anthropic_version``).
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """A public model name and where it goes."""

    model: str
    provider: Provider
    upstream_model: str
    owned_by: str


class Catalogue:
    """Public model name → route; the only source of truth for what a caller may ask for."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[str, Route] = {route.model: route for route in routes}

    def resolve(self, model: str) -> Route:
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(f"The model '{model}' does not exist or is not served by this gateway.")
        return route

    def routes(self) -> list[Route]:
        return sorted(self._routes.values(), key=lambda r: r.model)

    def providers(self) -> list[Provider]:
        seen: dict[str, Provider] = {}
        for route in self._routes.values():
            seen.setdefault(route.provider.name, route.provider)
        return sorted(seen.values(), key=lambda p: p.name)

    def __len__(self) -> int:
        return len(self._routes)


def _count(value: Any, key: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UpstreamUnavailable(f"The upstream reported an invalid usage.{key}: {value!r}.")
    return value


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reported them (cached ⊂ prompt, reasoning ⊂ completion, as OpenAI's)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any]) -> Usage:
        """Read OpenAI's ``usage`` object; bad numbers are an upstream fault, since billing depends on them."""
        prompt = _count(usage.get("prompt_tokens"), "prompt_tokens")
        completion = _count(usage.get("completion_tokens"), "completion_tokens")
        total = usage.get("total_tokens")
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion if total is None else _count(total, "total_tokens"),
            cached_prompt_tokens=_count(prompt_details.get("cached_tokens"), "prompt_tokens_details.cached_tokens")
            if isinstance(prompt_details, Mapping)
            else 0,
            reasoning_tokens=_count(
                completion_details.get("reasoning_tokens"), "completion_tokens_details.reasoning_tokens"
            )
            if isinstance(completion_details, Mapping)
            else 0,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished non-streaming call: the upstream's body, unchanged, and what it reported."""

    body_json: bytes
    usage: Usage
    provider: str
    upstream_model: str
    upstream_request_id: str


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The last event of a stream, after every chunk: the exact usage the upstream reported."""

    usage: Usage
    provider: str
    upstream_model: str
    upstream_request_id: str


def parse_request(body: Any, model: str) -> tuple[str, dict[str, Any]]:
    """The public model name and the request body; ``model`` (the RPC field) wins over the body's own."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = model or body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("You must provide a model parameter.")
    return name, body
