"""The operator's YAML catalogue: deployments, aliases, prices in nano-units, strategies; every mistake listed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.config import ConfigError
from tollgate_router.config import Settings

StartRouter = Callable[..., Awaitable[pb_grpc.RouterServiceStub]]

FULL = """
currency: EUR
default_strategy: latency
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1/", api_key_env: OPENAI_KEY, region: us,
           timeout_seconds: 20}
  azure-eu:
    kind: azure
    base_url: https://eu.example.com
    api_key_env: AZURE_KEY
    options: {api_version: "2024-10-21"}
    region: eu
  vllm: {kind: openai, base_url: "http://vllm:8000/v1"}
models:
  gpt-4o:
    owned_by: openai
    aliases: [gpt-4o-2024-08-06, gpt4o]
    strategy: weighted
    deployments:
      - {provider: openai, upstream_model: gpt-4o-2024-08-06, weight: 3, input_price_per_mtok: "2.50",
         output_price_per_mtok: 10}
      - {provider: azure-eu, upstream_model: gpt4o-prod, priority: 1, input_price_per_mtok: "0.000000001",
         output_price_per_mtok: "7.125", timeout_seconds: 5, name: gpt-4o-eu}
  llama: {provider: vllm, upstream_model: meta-llama/Llama-3.1-8B-Instruct, owned_by: meta}
"""


def _settings(tmp_path: Path, text: str, **env: str) -> Settings:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return Settings.from_env({"ROUTER_PROVIDERS_FILE": str(path), **env})


def _problems(tmp_path: Path, text: str, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, text, **env)
    return caught.value.problems


def test_the_full_format_with_the_old_single_deployment_form_beside_it(tmp_path: Path) -> None:
    catalogue = _settings(tmp_path, FULL, OPENAI_KEY="sk-o", AZURE_KEY="key-az-secret").catalogue
    assert catalogue.currency == "EUR" and catalogue.default_strategy == "latency"
    gpt = catalogue.entry("gpt-4o-2024-08-06")
    assert gpt is catalogue.entry("gpt4o") is catalogue.entry("gpt-4o")
    assert gpt.aliases == ("gpt-4o-2024-08-06", "gpt4o") and gpt.strategy == "weighted" and gpt.owned_by == "openai"
    openai, azure = gpt.deployments
    assert (openai.name, openai.upstream_model, openai.weight, openai.priority, openai.region) == (
        "gpt-4o/openai",
        "gpt-4o-2024-08-06",
        3,
        0,
        "us",
    )
    assert (openai.input_price_per_mtok_nanos, openai.output_price_per_mtok_nanos) == (2_500_000_000, 10_000_000_000)
    assert openai.provider.base_url == "https://api.openai.com/v1" and openai.provider.timeout_seconds == 20
    assert (azure.name, azure.region, azure.timeout_seconds, azure.provider.options) == (
        "gpt-4o-eu",
        "eu",
        5.0,
        {"api_version": "2024-10-21"},
    )
    assert (azure.input_price_per_mtok_nanos, azure.output_price_per_mtok_nanos) == (1, 7_125_000_000)
    llama = catalogue.entry("llama")
    assert llama.strategy == "latency" and llama.owned_by == "meta"
    assert llama.deployments[0].input_price_per_mtok_nanos is None
    assert "sk-o" not in repr(catalogue.routes()) and "key-az-secret" not in repr(azure.provider)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    bad = """
currency: dollars
default_strategy: fastest
providers:
  p: {kind: openai, base_url: "http://p/v1", region: "e u", timeout_seconds: -1, options: [x]}
models:
  a:
    strategy: cheapest
    aliases: [b]
    deployments:
      - {provider: p, weight: -1, priority: x, input_price_per_mtok: 1.5, output_price_per_mtok: "abc"}
      - {provider: p, output_price_per_mtok: "0.0000000001", extra: 1}
      - {provider: nope}
  b: {provider: p, deployments: [{provider: p}]}
  c: {deployments: []}
  d: {provider: p, mode: rerank}
"""
    found = "\n".join(_problems(tmp_path, bad))
    for expected in (
        "currency: 'dollars'",
        "default_strategy: 'fastest'",
        "providers.p.region",
        "providers.p.timeout_seconds",
        "providers.p.options",
        "models.a.strategy: 'cheapest'",
        "models.a.aliases: 'b' already names another model",
        "models.a.deployments[0].weight",
        "models.a.deployments[0].priority",
        "models.a.deployments[0].input_price_per_mtok: 1.5 must be an integer or a decimal string",
        "models.a.deployments[0].output_price_per_mtok: 'abc' is not a decimal amount",
        "models.a.deployments[1]: unknown keys extra",
        "models.a.deployments[1].output_price_per_mtok: '0.0000000001' must be a non-negative amount with at most 9",
        "models.a.deployments[1]: deployment name 'a/p' is used twice",
        "models.a.deployments[2].provider: 'nope'",
        "models.b: give either deployments or provider/upstream_model, not both",
        "models.c.deployments must be a non-empty list",
        "models.d.mode: 'rerank' is not one of chat, embedding",
    ):
        assert expected in found, expected


async def test_list_models_honours_constraints_and_carries_providers_aliases_and_prices(
    start_router: StartRouter, tmp_path: Path
) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(FULL)
    stub = await start_router(ROUTER_PROVIDERS_FILE=str(path), OPENAI_KEY="sk-o", AZURE_KEY="key-az-secret")
    everything = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert set(everything) == {"gpt-4o", "llama"}
    gpt = everything["gpt-4o"]
    assert (gpt.provider, list(gpt.providers), list(gpt.aliases), gpt.owned_by) == (
        "openai",
        ["openai", "azure-eu"],
        ["gpt-4o-2024-08-06", "gpt4o"],
        "openai",
    )
    # the cheapest deployment (input + output) gives the price: azure's 0.000000001 + 7.125
    assert (gpt.input_price_per_mtok_nanos, gpt.output_price_per_mtok_nanos, gpt.currency) == (1, 7_125_000_000, "EUR")
    assert everything["llama"].input_price_per_mtok_nanos == 0

    async def listed(**limits: list[str]) -> dict[str, list[str]]:
        reply = await stub.ListModels(pb.ListModelsRequest(constraints=pb.RoutingConstraints(**limits)))
        return {m.id: list(m.providers) for m in reply.models}

    assert await listed(allowed_regions=["eu"]) == {"gpt-4o": ["azure-eu"]}
    assert await listed(denied_providers=["azure-eu"]) == {"gpt-4o": ["openai"], "llama": ["vllm"]}
    assert await listed(allowed_models=["llama"]) == {"llama": ["vllm"]}
    us_only = await stub.ListModels(pb.ListModelsRequest(constraints=pb.RoutingConstraints(allowed_regions=["us"])))
    assert us_only.models[0].input_price_per_mtok_nanos == 2_500_000_000  # the cheapest *allowed* deployment
