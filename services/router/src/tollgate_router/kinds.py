"""The provider kinds the router speaks, each registered once: its name, its adapter and the options it checks.

The catalogue (``config``) accepts exactly these kinds and checks each provider's ``options`` with its kind's
checker at start; the server builds one adapter per kind from here. Adding a wire format is one entry below (and
its adapter module). ``openai`` covers every OpenAI-compatible provider (OpenAI, DeepSeek, Kimi, Qwen, GLM,
MiniMax, OpenRouter, vLLM…); ``azure`` is OpenAI's format with Azure's URLs and ``api-key`` header.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .adapters import ProviderAdapter
from .anthropic import AnthropicAdapter
from .gemini import GeminiAdapter
from .openai_compat import OpenAICompatibleAdapter
from .upstream_http import UpstreamLimits

__all__ = ["KINDS", "ProviderKind", "option_problems"]

OptionCheck = Callable[[Mapping[str, Any]], list[str]]


def _no_options(options: Mapping[str, Any]) -> list[str]:
    return []


def _azure_options(options: Mapping[str, Any]) -> list[str]:
    if not str(options.get("api_version", "")).strip():
        return ['api_version is required for an azure provider (e.g. "2024-10-21")']
    return []


@dataclass(frozen=True, slots=True)
class ProviderKind:
    name: str
    #: Builds the kind's adapter on the process's HTTP session.
    adapter: Callable[[aiohttp.ClientSession, UpstreamLimits], ProviderAdapter]
    #: Problems with a provider's ``options`` for this kind (checked at start, not on the first request).
    options: OptionCheck = _no_options


KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("openai", OpenAICompatibleAdapter),
        ProviderKind("azure", OpenAICompatibleAdapter, _azure_options),
        ProviderKind("anthropic", AnthropicAdapter),
        ProviderKind("gemini", GeminiAdapter),
    )
}


def option_problems(kind: str, options: Mapping[str, Any]) -> list[str]:
    """Problems with ``options`` for ``kind``: its own checks, then those every kind shares."""
    registered = KINDS.get(kind)
    problems = registered.options(options) if registered is not None else []
    if "default_max_tokens" in options:
        value = str(options["default_max_tokens"])
        if not value.isdigit() or int(value) < 1:
            problems.append(f"default_max_tokens must be a positive integer, not {value!r}")
    return problems
