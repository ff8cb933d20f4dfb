"""Each provider kind is registered once (``kinds.KINDS``): the catalogue accepts it, checks its options and the
server builds its adapter from that one entry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate_common.config import ConfigError
from tollgate_dev.mock_upstream import MockUpstream
from tollgate_router import kinds
from tollgate_router.config import Settings
from tollgate_router.openai_compat import OpenAICompatibleAdapter

from .conftest import StartRouter


def _needs_region_tag(options: Mapping[str, Any]) -> list[str]:
    return [] if "region_tag" in options else ["region_tag is required for an echo provider"]


@pytest.fixture
def echo_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new wire format, registered the one way there is (it speaks OpenAI's, so the mock can serve it)."""
    kind = kinds.ProviderKind("echo", OpenAICompatibleAdapter, _needs_region_tag)
    monkeypatch.setitem(kinds.KINDS, "echo", kind)


def _providers_file(tmp_path: Path, base_url: str, options: dict[str, str]) -> str:
    path = tmp_path / "providers.yaml"
    path.write_text(
        json.dumps(
            {
                "providers": {"e": {"kind": "echo", "base_url": base_url, "options": options}},
                "models": {"gpt-4o-mini": {"provider": "e"}},
            }
        )
    )
    return str(path)


def test_the_catalogue_checks_a_registered_kinds_options(echo_kind: None, tmp_path: Path) -> None:
    path = _providers_file(tmp_path, "http://127.0.0.1:9/v1", {})
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ROUTER_PROVIDERS_FILE": path})
    assert "providers.e.options.region_tag is required for an echo provider" in str(caught.value)


async def test_a_registered_kind_is_served_by_its_adapter(
    echo_kind: None, tmp_path: Path, mock: MockUpstream, start_router: StartRouter
) -> None:
    stub = await start_router(ROUTER_PROVIDERS_FILE=_providers_file(tmp_path, mock.base_url, {"region_tag": "x"}))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    reply = await stub.Complete(pb.CompleteRequest(model="gpt-4o-mini", body_json=json.dumps(body).encode()))
    assert reply.provider == "e" and reply.usage.total_tokens > 0


def test_every_registered_kind_is_accepted_and_an_unknown_one_is_named() -> None:
    assert list(kinds.KINDS) == ["openai", "azure", "anthropic", "gemini"]
    assert kinds.option_problems("azure", {}) == ['api_version is required for an azure provider (e.g. "2024-10-21")']
    assert kinds.option_problems("openai", {"default_max_tokens": "0"}) == [
        "default_max_tokens must be a positive integer, not '0'"
    ]
