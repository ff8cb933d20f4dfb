"""The provider catalogue, read once at start from operator configuration only.

A request can name a public model, never a provider URL or key: those come from ``ROUTER_PROVIDERS_FILE`` (YAML,
:func:`catalogue_from_file`) or, when it is unset, from the environment (``ROUTER_MOCK_BASE_URL``,
``OPENAI_API_KEY``, ``DEEPSEEK_API_KEY``: :func:`catalogue_from_env`). Both return the catalogue and every problem
found, so a bad deployment exits 2 with all of them listed instead of failing on its first request. Provider keys
are read here and never printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .domain import MODES, STRATEGIES, Catalogue, Provider, Route
from .kinds import KINDS, option_problems

__all__ = ["DEMO_MODELS", "catalogue_from_env", "catalogue_from_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

#: The demo catalogue's embedding models (every other demo model is a chat model).
DEMO_EMBEDDING_MODELS = frozenset({"text-embedding-3-small", "text-embedding-3-large", "gemini-embedding-001"})
#: The catalogue the development mock serves: public name → who makes the model (OpenAI's ``owned_by``).
DEMO_MODELS: dict[str, str] = {
    "gpt-4o-mini": "openai",
    "gpt-4o": "openai",
    "deepseek-chat": "deepseek",
    "claude-3-5-haiku": "anthropic",
    "gemini-2.0-flash": "google",
    # Embedding models (POST /v1/embeddings): OpenAI's on the mock's OpenAI endpoint, Google's on its Gemini
    # batchEmbedContents (which reports no token count: ingress bills its own count of the texts).
    "text-embedding-3-small": "openai",
    "text-embedding-3-large": "openai",
    "gemini-embedding-001": "google",
}
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEEPSEEK_BASE_URL = "https://api.deepseek.com/v1"
_PROVIDER_KEYS = {"kind", "base_url", "api_key_env", "options", "region", "timeout_seconds"}
_DEPLOYMENT_KEYS = {
    "provider",
    "upstream_model",
    "name",
    "weight",
    "priority",
    "region",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "timeout_seconds",
}
_MODEL_KEYS = {"owned_by", "aliases", "strategy", "deployments", "mode"} | _DEPLOYMENT_KEYS
NANOS_PER_UNIT = 1_000_000_000


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    if parts.query or parts.fragment:
        return f"{url!r} must not carry a query or fragment"
    return None


def catalogue_from_env(mock_base_url: str, environ: Mapping[str, str]) -> tuple[Catalogue, list[str]]:
    """The development default: the mock serves the demo catalogue; a real key takes over its models."""
    problems: list[str] = []
    routes: dict[str, Route] = {}
    if mock_base_url:
        problem = _url_problem(mock_base_url)
        if problem:
            problems.append(f"ROUTER_MOCK_BASE_URL: {problem}")
        # Accept the mock's address with or without the OpenAI-style /v1 suffix. The mock speaks each wire
        # format: Anthropic's models go to its /v1/messages, Google's to its Gemini endpoints.
        root = mock_base_url.rstrip("/").removesuffix("/v1")
        mocks = {
            "anthropic": Provider("mock-anthropic", "anthropic", root),
            "google": Provider("mock-gemini", "gemini", root),
        }
        openai_mock = Provider("mock", "openai", root + "/v1")
        for model, owner in DEMO_MODELS.items():
            mode = "embedding" if model in DEMO_EMBEDDING_MODELS else "chat"
            routes[model] = Route(model, mocks.get(owner, openai_mock), model, owner, mode=mode)
    openai_key = environ.get("OPENAI_API_KEY", "").strip()
    if openai_key:
        openai = Provider("openai", "openai", OPENAI_BASE_URL, openai_key)
        for model in ("gpt-4o", "gpt-4o-mini"):
            routes[model] = Route(model, openai, model, "openai")
    deepseek_key = environ.get("DEEPSEEK_API_KEY", "").strip()
    if deepseek_key:
        routes["deepseek-chat"] = Route(
            "deepseek-chat",
            Provider("deepseek", "openai", DEEPSEEK_BASE_URL, deepseek_key),
            "deepseek-chat",
            "deepseek",
        )
    if not routes:
        problems.append(
            "no upstream provider is configured: set ROUTER_PROVIDERS_FILE, or ROUTER_MOCK_BASE_URL (development), "
            "or a provider key (OPENAI_API_KEY, DEEPSEEK_API_KEY)"
        )
    return Catalogue(routes.values()), problems


def catalogue_from_file(path: Path, environ: Mapping[str, str]) -> tuple[Catalogue, list[str]]:
    """Read the operator's YAML (the full format is in the router's README)::

        currency: USD                     # of every price below (default USD)
        default_strategy: priority        # priority | weighted | latency | price (default priority)
        providers:
          openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY, region: us}
          azure-eu:
            kind: azure
            base_url: https://example-eu.openai.azure.com
            api_key_env: AZURE_EU_KEY
            options: {api_version: "2024-10-21"}
            region: eu
            timeout_seconds: 30
          local-vllm: {kind: openai, base_url: http://vllm:8000/v1}          # no key
        models:
          gpt-4o:
            owned_by: openai
            aliases: [gpt-4o-2024-08-06]
            strategy: weighted
            deployments:
              - {provider: openai, upstream_model: gpt-4o-2024-08-06, weight: 3,
                 input_price_per_mtok: "2.50", output_price_per_mtok: 10}
              - {provider: azure-eu, upstream_model: gpt4o-prod, weight: 1, priority: 1}
          llama-3.1-8b: {provider: local-vllm, upstream_model: meta-llama/Llama-3.1-8B-Instruct, owned_by: meta}
          text-embedding-3-small: {provider: openai, mode: embedding}

    ``mode`` (``chat``, the default, or ``embedding``) says which calls a model takes: chat completions never reach
    an embedding model, nor embeddings a chat model (a 400 naming the endpoint to use). The single-deployment form
    (``provider``/``upstream_model`` directly under the model) stays valid.
    ``upstream_model`` defaults to the public name, ``owned_by`` to the first deployment's provider, a
    deployment's ``region`` and ``timeout_seconds`` to its provider's. Prices are decimal amounts of the currency
    per million tokens, stored as integer nano-units (never through a float).
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return Catalogue(()), [f"cannot read the file ({exc.strerror or exc})"]
    except yaml.YAMLError as exc:
        return Catalogue(()), [f"is not valid YAML ({exc})"]
    if not isinstance(document, dict):
        return Catalogue(()), ["must be a mapping with 'providers' and 'models'"]
    problems: list[str] = []
    unknown = set(document) - {"providers", "models", "currency", "default_strategy"}
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(sorted(map(str, unknown)))}")
    currency = document.get("currency", "USD")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        problems.append(f"currency: {currency!r} must be an ISO 4217 code such as USD")
        currency = "USD"
    default_strategy = document.get("default_strategy", "priority")
    if default_strategy not in STRATEGIES:
        problems.append(f"default_strategy: {default_strategy!r} is not one of {', '.join(STRATEGIES)}")
        default_strategy = "priority"
    providers = _providers(document.get("providers"), environ, problems)
    routes, aliases, strategies = _models(document.get("models"), providers, problems)
    catalogue = Catalogue(
        routes, aliases=aliases, strategies=strategies, default_strategy=default_strategy, currency=currency
    )
    return catalogue, problems


def _timeout(value: Any, where: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        problems.append(f"{where}: {value!r} must be a number of seconds in (0, 3600]")
        return None
    return float(value)


def _region(value: Any, where: str, problems: list[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _NAME.match(value):
        problems.append(f"{where}: {value!r} must be a short name such as eu or us-east")
        return ""
    return value


def _price(value: Any, where: str, problems: list[str]) -> int | None:
    """A decimal amount (string or integer; a YAML float is refused: it may already be rounded) → nano-units."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        problems.append(f'{where}: {value!r} must be an integer or a decimal string such as "2.50"')
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        problems.append(f"{where}: {value!r} is not a decimal amount")
        return None
    nanos = amount * NANOS_PER_UNIT
    if not amount.is_finite() or amount < 0 or nanos != nanos.to_integral_value():
        problems.append(f"{where}: {value!r} must be a non-negative amount with at most 9 decimals")
        return None
    return int(nanos)


def _providers(section: Any, environ: Mapping[str, str], problems: list[str]) -> dict[str, Provider]:
    if not isinstance(section, dict) or not section:
        problems.append("'providers' must be a non-empty mapping of name -> {kind, base_url, api_key_env}")
        return {}
    providers: dict[str, Provider] = {}
    for name, spec in section.items():
        where = f"providers.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: invalid provider name")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a mapping with kind, base_url and optionally api_key_env")
            continue
        unknown = set(spec) - _PROVIDER_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        kind = spec.get("kind")
        if kind not in KINDS:
            problems.append(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        base_url = spec.get("base_url")
        if not isinstance(base_url, str) or not base_url:
            problems.append(f"{where}.base_url is required")
            continue
        problem = _url_problem(base_url)
        if problem:
            problems.append(f"{where}.base_url: {problem}")
        key_env = spec.get("api_key_env")
        api_key = ""
        if key_env is not None:
            if not isinstance(key_env, str) or not key_env:
                problems.append(f"{where}.api_key_env must name an environment variable")
            else:
                api_key = environ.get(key_env, "").strip()
                if not api_key:
                    problems.append(f"{where}.api_key_env: the variable {key_env} is not set")
        options = spec.get("options") or {}
        if not isinstance(options, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in options.items()
        ):
            problems.append(f"{where}.options must be a mapping of names to strings")
            options = {}
        problems.extend(f"{where}.options.{p}" for p in option_problems(str(kind), options))
        providers[name] = Provider(
            name,
            str(kind),
            base_url.rstrip("/"),
            api_key,
            {str(k): str(v) for k, v in options.items()},
            _region(spec.get("region"), f"{where}.region", problems),
            _timeout(spec.get("timeout_seconds"), f"{where}.timeout_seconds", problems),
        )
    return providers


def _models(
    section: Any, providers: dict[str, Provider], problems: list[str]
) -> tuple[list[Route], dict[str, str], dict[str, str]]:
    if not isinstance(section, dict) or not section:
        problems.append("'models' must be a non-empty mapping of public name -> {provider, upstream_model}")
        return [], {}, {}
    routes: list[Route] = []
    aliases: dict[str, str] = {}
    strategies: dict[str, str] = {}
    deployment_names: set[str] = set()
    for model, spec in section.items():
        where = f"models.{model}"
        if not isinstance(model, str) or not _NAME.match(model):
            problems.append(f"{where}: invalid model name")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a mapping with provider and upstream_model, or deployments")
            continue
        unknown = set(spec) - _MODEL_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        if "deployments" in spec:
            if _DEPLOYMENT_KEYS & set(spec):
                problems.append(f"{where}: give either deployments or provider/upstream_model, not both")
            specs = spec["deployments"]
            if not isinstance(specs, list) or not specs:
                problems.append(f"{where}.deployments must be a non-empty list")
                continue
            listed = [(f"{where}.deployments[{i}]", d) for i, d in enumerate(specs)]
        else:
            listed = [(where, {k: v for k, v in spec.items() if k in _DEPLOYMENT_KEYS})]
        owned_by = spec.get("owned_by")
        if owned_by is not None and (not isinstance(owned_by, str) or not owned_by):
            problems.append(f"{where}.owned_by must be a non-empty string")
            owned_by = None
        mode = spec.get("mode", "chat")
        if mode not in MODES:
            problems.append(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
            mode = "chat"
        strategy = spec.get("strategy")
        if strategy is not None:
            if strategy not in STRATEGIES:
                problems.append(f"{where}.strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
            else:
                strategies[model] = strategy
        for dwhere, dspec in listed:
            route = _deployment(model, dwhere, dspec, providers, owned_by, problems)
            if route is None:
                continue
            route = replace(route, mode=mode)
            if route.name in deployment_names:
                problems.append(f"{dwhere}: deployment name {route.name!r} is used twice (set 'name')")
                continue
            deployment_names.add(route.name)
            routes.append(route)
        names = spec.get("aliases") or []
        if not isinstance(names, list) or not all(isinstance(a, str) and _NAME.match(a) for a in names):
            problems.append(f"{where}.aliases must be a list of model names")
            continue
        for alias in names:
            if alias in section or alias in aliases:
                problems.append(f"{where}.aliases: {alias!r} already names another model or alias")
            else:
                aliases[alias] = model
    return routes, aliases, strategies


def _deployment(
    model: str,
    where: str,
    spec: Any,
    providers: dict[str, Provider],
    owned_by: str | None,
    problems: list[str],
) -> Route | None:
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a mapping with provider and upstream_model")
        return None
    unknown = set(spec) - _DEPLOYMENT_KEYS
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    provider_name = spec.get("provider")
    provider = providers.get(provider_name) if isinstance(provider_name, str) else None
    if provider is None:
        problems.append(f"{where}.provider: {spec.get('provider')!r} is not a configured provider")
        return None
    upstream_model = spec.get("upstream_model", model)
    if not isinstance(upstream_model, str) or not upstream_model:
        problems.append(f"{where}.upstream_model must be a non-empty string")
        return None
    name = spec.get("name", "")
    if not isinstance(name, str) or (name and not _NAME.match(name)):
        problems.append(f"{where}.name: invalid deployment name")
        name = ""
    weight = spec.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
        problems.append(f"{where}.weight: {weight!r} must be an integer in [0, 1000000]")
        weight = 1
    priority = spec.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        problems.append(f"{where}.priority: {priority!r} must be an integer in [-1000, 1000]")
        priority = 0
    return Route(
        model,
        provider,
        upstream_model,
        owned_by or provider.name,
        deployment=name or f"{model}/{provider.name}",
        weight=weight,
        priority=priority,
        region=_region(spec.get("region"), f"{where}.region", problems) or provider.region,
        input_price_per_mtok_nanos=_price(spec.get("input_price_per_mtok"), f"{where}.input_price_per_mtok", problems),
        output_price_per_mtok_nanos=_price(
            spec.get("output_price_per_mtok"), f"{where}.output_price_per_mtok", problems
        ),
        timeout_seconds=_timeout(spec.get("timeout_seconds"), f"{where}.timeout_seconds", problems),
    )
