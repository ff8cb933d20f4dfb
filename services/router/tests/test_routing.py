"""routing.plan: strategies, the caller's OpenRouter-style overrides and the policy's constraints (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from tollgate_router.domain import Catalogue, Provider, Route
from tollgate_router.errors import InvalidRequest, ModelNotFound
from tollgate_router.routing import (
    Constraints,
    LatencyTracker,
    NoEligibleDeployment,
    Overrides,
    plan,
    split_overrides,
)

OPENAI = Provider("openai", "openai", "https://api.openai.com/v1", region="us")
AZURE = Provider("azure-eu", "azure", "https://eu.example.com", region="eu")
DEEPSEEK = Provider("deepseek", "openai", "https://api.deepseek.com/v1", region="cn")
G = 1_000_000_000


def _route(
    provider: Provider,
    *,
    priority: int = 0,
    weight: int = 1,
    price: tuple[int, int] | None = None,
    model: str = "gpt-4o",
) -> Route:
    return Route(
        model,
        provider,
        model,
        "openai",
        weight=weight,
        priority=priority,
        region=provider.region,
        input_price_per_mtok_nanos=price[0] if price else None,
        output_price_per_mtok_nanos=price[1] if price else None,
    )


def _catalogue(strategy: str = "priority") -> Catalogue:
    return Catalogue(
        [
            _route(OPENAI, priority=0, weight=3, price=(5 * G, 15 * G)),
            _route(AZURE, priority=1, weight=1, price=(2 * G, 10 * G)),
            _route(DEEPSEEK, priority=2, weight=0),
            _route(DEEPSEEK, model="deepseek-chat", price=(G // 4, G)),
        ],
        aliases={"gpt-4o-2024-08-06": "gpt-4o"},
        strategies={"gpt-4o": strategy},
    )


def _plan(
    catalogue: Catalogue,
    model: str = "gpt-4o",
    overrides: Overrides | None = None,
    constraints: Constraints | None = None,
    *,
    seed: int = 1,
    latency: LatencyTracker | None = None,
    epsilon: float = 0.0,
) -> list[str]:
    routes = plan(
        catalogue,
        model,
        overrides or Overrides(),
        constraints or Constraints(),
        rng=random.Random(seed),
        latency=latency or LatencyTracker(),
        epsilon=epsilon,
    )
    return [r.name for r in routes]


def test_priority_orders_by_priority_and_aliases_resolve() -> None:
    assert _plan(_catalogue()) == ["gpt-4o/openai", "gpt-4o/azure-eu", "gpt-4o/deepseek"]
    assert _plan(_catalogue(), "gpt-4o-2024-08-06") == _plan(_catalogue())


def test_weighted_picks_first_in_proportion_to_weight_and_never_a_zero_weight_first() -> None:
    firsts = Counter(_plan(_catalogue("weighted"), seed=seed)[0] for seed in range(400))
    assert set(firsts) == {"gpt-4o/openai", "gpt-4o/azure-eu"}
    assert 2.0 < firsts["gpt-4o/openai"] / firsts["gpt-4o/azure-eu"] < 4.5  # weights 3:1
    assert all(len(_plan(_catalogue("weighted"), seed=s)) == 3 for s in range(20))


def test_latency_prefers_the_fastest_measured_and_explores_the_unmeasured() -> None:
    latency = LatencyTracker(alpha=0.5)
    latency.observe("gpt-4o/openai", 0.9)
    latency.observe("gpt-4o/azure-eu", 0.2)
    # deepseek never measured: explored first
    assert _plan(_catalogue("latency"), latency=latency) == ["gpt-4o/deepseek", "gpt-4o/azure-eu", "gpt-4o/openai"]
    latency.observe("gpt-4o/deepseek", 0.5)
    assert _plan(_catalogue("latency"), latency=latency) == ["gpt-4o/azure-eu", "gpt-4o/deepseek", "gpt-4o/openai"]
    latency.observe("gpt-4o/azure-eu", 1.0)  # EWMA: 0.2 → 0.6
    assert latency.get("gpt-4o/azure-eu") == pytest.approx(0.6)
    assert _plan(_catalogue("latency"), latency=latency)[0] == "gpt-4o/deepseek"
    explored = {_plan(_catalogue("latency"), latency=latency, seed=s, epsilon=1.0)[0] for s in range(50)}
    assert explored == {"gpt-4o/openai", "gpt-4o/azure-eu", "gpt-4o/deepseek"}


def test_price_orders_cheapest_first_and_unknown_prices_last() -> None:
    assert _plan(_catalogue("price")) == ["gpt-4o/azure-eu", "gpt-4o/openai", "gpt-4o/deepseek"]
    assert _plan(_catalogue(), overrides=Overrides(sort="price"))[0] == "gpt-4o/azure-eu"


def test_order_only_ignore_and_allow_fallbacks() -> None:
    c = _catalogue()
    assert _plan(c, overrides=Overrides(order=("deepseek",))) == ["gpt-4o/deepseek", "gpt-4o/openai", "gpt-4o/azure-eu"]
    assert _plan(c, overrides=Overrides(order=("deepseek",), allow_fallbacks=False)) == ["gpt-4o/deepseek"]
    assert _plan(c, overrides=Overrides(allow_fallbacks=False)) == ["gpt-4o/openai"]
    assert _plan(c, overrides=Overrides(only=("azure-eu", "deepseek"))) == ["gpt-4o/azure-eu", "gpt-4o/deepseek"]
    assert _plan(c, overrides=Overrides(ignore=("openai",))) == ["gpt-4o/azure-eu", "gpt-4o/deepseek"]


def test_max_price_excludes_dearer_and_unpriced_deployments() -> None:
    c = _catalogue()
    assert _plan(c, overrides=Overrides(max_prompt_nanos=3 * G)) == ["gpt-4o/azure-eu"]
    assert _plan(c, overrides=Overrides(max_completion_nanos=15 * G)) == ["gpt-4o/openai", "gpt-4o/azure-eu"]
    with pytest.raises(NoEligibleDeployment, match="provider preferences"):
        _plan(c, overrides=Overrides(max_prompt_nanos=G))


def test_models_fallback_list_follows_the_requested_model() -> None:
    c = _catalogue()
    names = _plan(c, overrides=Overrides(models=("deepseek-chat", "gpt-4o")))
    assert names == ["gpt-4o/openai", "gpt-4o/azure-eu", "gpt-4o/deepseek", "deepseek-chat/deepseek"]
    with pytest.raises(ModelNotFound):
        _plan(c, overrides=Overrides(models=("nope",)))
    with pytest.raises(ModelNotFound):
        _plan(c, "nope")


def test_constraints_come_first_and_overrides_cannot_loosen_them() -> None:
    c = _catalogue()
    eu = Constraints(allowed_regions=frozenset({"eu"}))
    assert _plan(c, constraints=eu) == ["gpt-4o/azure-eu"]
    # the caller asks for openai by order and by only: policy still says EU only
    assert _plan(c, overrides=Overrides(order=("openai",), only=("openai", "azure-eu")), constraints=eu) == [
        "gpt-4o/azure-eu"
    ]
    with pytest.raises(NoEligibleDeployment, match="provider preferences"):
        _plan(c, overrides=Overrides(only=("openai",)), constraints=eu)
    assert _plan(c, constraints=Constraints(denied_providers=frozenset({"openai", "deepseek"}))) == ["gpt-4o/azure-eu"]
    assert _plan(c, constraints=Constraints(allowed_providers=frozenset({"deepseek"}))) == ["gpt-4o/deepseek"]
    only_deepseek_chat = Constraints(allowed_models=frozenset({"deepseek-chat"}))
    assert _plan(c, overrides=Overrides(models=("deepseek-chat",)), constraints=only_deepseek_chat) == [
        "deepseek-chat/deepseek"
    ]
    with pytest.raises(NoEligibleDeployment, match="not allowed by policy"):
        _plan(c, constraints=only_deepseek_chat)


def test_split_overrides_strips_the_fields_and_reads_prices_exactly() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [],
        "models": ["deepseek-chat"],
        "provider": {
            "order": ["azure-eu"],
            "allow_fallbacks": False,
            "sort": "throughput",
            "max_price": {"prompt": "2.5", "completion": 10},
            "only": ["a"],
            "ignore": ["b"],
        },
    }
    rest, o = split_overrides(body)
    assert rest == {"model": "gpt-4o", "messages": []}
    assert o == Overrides(
        order=("azure-eu",),
        allow_fallbacks=False,
        sort="latency",
        max_prompt_nanos=2_500_000_000,
        max_completion_nanos=10 * G,
        only=("a",),
        ignore=("b",),
        models=("deepseek-chat",),
    )
    plain = {"model": "m", "messages": []}
    assert split_overrides(plain) == (plain, Overrides())
    for bad in (
        {"provider": {"sort": "fastest"}},
        {"provider": {"order": "x"}},
        {"provider": {"max_price": {"x": 1}}},
        {"provider": {"allow_fallbacks": "no"}},
        {"provider": {"route": 1}},
        {"models": "x"},
        {"provider": {"max_price": {"prompt": -1}}},
    ):
        with pytest.raises(InvalidRequest):
            split_overrides({"model": "m", **bad})


def test_only_authorized_catalogue_models_are_served_whatever_the_overrides_say() -> None:
    """The caller's hold covers `authorized_models`: a fallback or alias outside it is never planned."""
    c = _catalogue()
    held_for_deepseek = Constraints(authorized_models=frozenset({"deepseek-chat"}))
    assert _plan(c, "deepseek-chat", Overrides(models=("gpt-4o",)), held_for_deepseek) == ["deepseek-chat/deepseek"]
    with pytest.raises(NoEligibleDeployment, match="not authorized"):
        _plan(c, "deepseek-chat", Overrides(models=("gpt-4o",), only=("gpt-4o/openai",)), held_for_deepseek)
    # an alias is authorized by the model it resolves to, never by its own name
    with pytest.raises(NoEligibleDeployment, match="not authorized"):
        _plan(c, "gpt-4o-2024-08-06", constraints=Constraints(authorized_models=frozenset({"gpt-4o-2024-08-06"})))
    assert _plan(c, "gpt-4o-2024-08-06", constraints=Constraints(authorized_models=frozenset({"gpt-4o"})))[0] == (
        "gpt-4o/openai"
    )
