"""Router settings and the provider catalogue, read once at start from operator configuration only.

A request can name a public model, never a provider URL or key: those come from ``ROUTER_PROVIDERS_FILE`` (YAML)
or, when it is unset, from the environment (``ROUTER_MOCK_BASE_URL``, ``OPENAI_API_KEY``, ``DEEPSEEK_API_KEY``).
Everything is validated up front, so a bad deployment exits 2 with every problem listed instead of failing on
its first request. Provider keys are read here and never printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from tollgate_common.config import EnvReader

from .domain import SUPPORTED_KINDS, Catalogue, Provider, Route

__all__ = ["DEMO_MODELS", "Settings", "catalogue_from_env", "catalogue_from_file"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

#: The catalogue the development mock serves: public name → who makes the model (OpenAI's ``owned_by``).
DEMO_MODELS: dict[str, str] = {
    "gpt-4o-mini": "openai",
    "gpt-4o": "openai",
    "deepseek-chat": "deepseek",
    "claude-3-5-haiku": "anthropic",
    "gemini-2.0-flash": "google",
}
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEEPSEEK_BASE_URL = "https://api.deepseek.com/v1"
_PROVIDER_KEYS = {"kind", "base_url", "api_key_env"}
_MODEL_KEYS = {"provider", "upstream_model", "owned_by"}


@dataclass(frozen=True, slots=True)
class Settings:
    catalogue: Catalogue
    #: Where the catalogue came from ("env" or the file path), for the start-up log line.
    catalogue_source: str = "env"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    #: Bounds the whole answer of a non-streaming call, and each silence (headers, gap between chunks) of a stream.
    upstream_timeout_seconds: float = 60.0
    #: Size of the keep-alive pool shared by every provider.
    upstream_max_connections: int = 1000
    #: On SIGTERM, in-flight calls (streams included) get this long to finish before they are cut.
    shutdown_grace_seconds: float = 15.0
    metrics_port: int = 0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader("ROUTER", environ)
        providers_file = env.str("PROVIDERS_FILE")
        if providers_file:
            catalogue, problems = catalogue_from_file(Path(providers_file), env.environ)
            problems = [f"{env.name('PROVIDERS_FILE')}={providers_file}: {p}" for p in problems]
        else:
            catalogue, problems = catalogue_from_env(env.str("MOCK_BASE_URL"), env.environ)
        env.problems.extend(problems)
        settings = cls(
            catalogue=catalogue,
            catalogue_source=providers_file or "env",
            grpc_host=env.str("GRPC_HOST", "127.0.0.1"),
            grpc_port=env.port("GRPC_PORT", 50051),
            upstream_timeout_seconds=env.float("UPSTREAM_TIMEOUT_SECONDS", 60.0, minimum=0.001),
            upstream_max_connections=env.int("UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1, maximum=100_000),
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", 15.0, minimum=0.0),
            metrics_port=env.port("METRICS_PORT", 0),
            log_level=env.str("LOG_LEVEL", "INFO").upper(),
        )
        if settings.log_level not in _LEVELS:
            env.problems.append(f"{env.name('LOG_LEVEL')}={settings.log_level!r} must be one of {', '.join(_LEVELS)}")
        env.check()
        return settings


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
            routes[model] = Route(model, mocks.get(owner, openai_mock), model, owner)
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
    """Read the operator's YAML::

        providers:
          openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
          local-vllm: {kind: openai, base_url: http://vllm:8000/v1}          # no key
        models:
          gpt-4o: {provider: openai, upstream_model: gpt-4o-2024-08-06}
          llama-3.1-8b: {provider: local-vllm, upstream_model: meta-llama/Llama-3.1-8B-Instruct, owned_by: meta}

    ``upstream_model`` defaults to the public name, ``owned_by`` to the provider's name.
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
    unknown = set(document) - {"providers", "models"}
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(sorted(map(str, unknown)))}")
    providers = _providers(document.get("providers"), environ, problems)
    routes = _routes(document.get("models"), providers, problems)
    return Catalogue(routes), problems


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
        if kind not in SUPPORTED_KINDS:
            problems.append(f"{where}.kind: {kind!r} is not one of {', '.join(SUPPORTED_KINDS)}")
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
        providers[name] = Provider(name, str(kind), base_url.rstrip("/"), api_key)
    return providers


def _routes(section: Any, providers: dict[str, Provider], problems: list[str]) -> list[Route]:
    if not isinstance(section, dict) or not section:
        problems.append("'models' must be a non-empty mapping of public name -> {provider, upstream_model}")
        return []
    routes: list[Route] = []
    for model, spec in section.items():
        where = f"models.{model}"
        if not isinstance(model, str) or not _NAME.match(model):
            problems.append(f"{where}: invalid model name")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a mapping with provider and upstream_model")
            continue
        unknown = set(spec) - _MODEL_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        provider_name = spec.get("provider")
        provider = providers.get(provider_name) if isinstance(provider_name, str) else None
        if provider is None:
            problems.append(f"{where}.provider: {spec.get('provider')!r} is not a configured provider")
            continue
        upstream_model = spec.get("upstream_model", model)
        if not isinstance(upstream_model, str) or not upstream_model:
            problems.append(f"{where}.upstream_model must be a non-empty string")
            continue
        owned_by = spec.get("owned_by", provider.name)
        if not isinstance(owned_by, str) or not owned_by:
            problems.append(f"{where}.owned_by must be a non-empty string")
            continue
        routes.append(Route(model, provider, upstream_model, owned_by))
    return routes
