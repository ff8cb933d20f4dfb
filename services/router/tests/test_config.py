"""Operator configuration: what routes where, and every mistake reported at start (exit 2), keys never shown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.config import ConfigError
from tollgate_common.grpc import wait_for_health
from tollgate_dev.mock_upstream import MockUpstream
from tollgate_dev.ports import free_port
from tollgate_router.config import Settings


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    return caught.value.problems


def routes(settings: Settings) -> dict[str, tuple[str, str, str]]:
    return {r.model: (r.provider.name, r.provider.base_url, r.upstream_model) for r in settings.catalogue.routes()}


def test_the_mock_serves_the_demo_catalogue_with_or_without_v1() -> None:
    for url in ("http://127.0.0.1:8090", "http://127.0.0.1:8090/v1/"):
        settings = Settings.from_env({"ROUTER_MOCK_BASE_URL": url})
        assert routes(settings) == {
            **{m: ("mock", "http://127.0.0.1:8090/v1", m)
               for m in ("gpt-4o-mini", "gpt-4o", "deepseek-chat", "text-embedding-3-small", "text-embedding-3-large")},
            # the mock speaks Anthropic's and Gemini's wire formats at its root
            "claude-3-5-haiku": ("mock-anthropic", "http://127.0.0.1:8090", "claude-3-5-haiku"),
            "gemini-2.0-flash": ("mock-gemini", "http://127.0.0.1:8090", "gemini-2.0-flash"),
            "gemini-embedding-001": ("mock-gemini", "http://127.0.0.1:8090", "gemini-embedding-001"),
        }
    assert settings.grpc_port == 50051 and settings.upstream_timeout_seconds == 60.0


def test_real_keys_take_over_their_models_from_the_mock() -> None:
    settings = Settings.from_env(
        {"ROUTER_MOCK_BASE_URL": "http://127.0.0.1:8090/v1", "OPENAI_API_KEY": "sk-open", "DEEPSEEK_API_KEY": "sk-deep"}
    )
    table = routes(settings)
    assert table["gpt-4o"] == ("openai", "https://api.openai.com/v1", "gpt-4o")
    assert table["gpt-4o-mini"][0] == "openai"
    assert table["deepseek-chat"] == ("deepseek", "https://api.deepseek.com/v1", "deepseek-chat")
    assert table["claude-3-5-haiku"][0] == "mock-anthropic"
    assert "sk-open" not in repr(settings) and "sk-deep" not in repr(settings.catalogue.routes())


def test_a_key_alone_serves_only_that_providers_models() -> None:
    assert set(routes(Settings.from_env({"DEEPSEEK_API_KEY": "sk-deep"}))) == {"deepseek-chat"}


def test_no_provider_at_all_is_refused() -> None:
    [problem] = problems({})
    assert "no upstream provider" in problem and "ROUTER_PROVIDERS_FILE" in problem


def test_every_bad_value_is_reported_at_once() -> None:
    found = problems(
        {
            "ROUTER_MOCK_BASE_URL": "ftp://example",
            "ROUTER_UPSTREAM_TIMEOUT_SECONDS": "soon",
            "ROUTER_GRPC_PORT": "70000",
            "ROUTER_LOG_LEVEL": "chatty",
        }
    )
    text = "\n".join(found)
    assert len(found) == 4
    for name in ("ROUTER_MOCK_BASE_URL", "ROUTER_UPSTREAM_TIMEOUT_SECONDS", "ROUTER_GRPC_PORT", "ROUTER_LOG_LEVEL"):
        assert name in text


def test_providers_file_replaces_the_environment_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        """
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1/", api_key_env: MY_OPENAI_KEY}
  local: {kind: openai, base_url: "http://vllm:8000/v1"}
models:
  gpt-4o: {provider: openai, upstream_model: gpt-4o-2024-08-06}
  llama: {provider: local, upstream_model: meta-llama/Llama-3.1-8B-Instruct, owned_by: meta}
  qwen: {provider: local}
"""
    )
    settings = Settings.from_env(
        {"ROUTER_PROVIDERS_FILE": str(path), "ROUTER_MOCK_BASE_URL": "http://127.0.0.1:8090", "MY_OPENAI_KEY": "sk-x"}
    )
    assert routes(settings) == {
        "gpt-4o": ("openai", "https://api.openai.com/v1", "gpt-4o-2024-08-06"),
        "llama": ("local", "http://vllm:8000/v1", "meta-llama/Llama-3.1-8B-Instruct"),
        "qwen": ("local", "http://vllm:8000/v1", "qwen"),
    }
    owners = {r.model: r.owned_by for r in settings.catalogue.routes()}
    assert owners == {"gpt-4o": "openai", "llama": "meta", "qwen": "local"}
    assert settings.catalogue.resolve("gpt-4o").provider.api_key == "sk-x"
    assert settings.catalogue.resolve("qwen").provider.api_key == ""


def test_providers_file_mistakes_are_each_named(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        """
providers:
  a: {kind: cohere, base_url: "https://api.anthropic.com"}
  b: {kind: openai, base_url: "not a url", api_key_env: UNSET_KEY}
  c: {kind: openai, base_url: "http://ok:1/v1", timeout: 3}
  d: {kind: azure, base_url: "https://x.openai.azure.com"}
  e: {kind: anthropic, base_url: "https://api.anthropic.com", options: {default_max_tokens: "lots"}}
models:
  m1: {provider: nowhere}
  m2: {provider: c, upstream_model: 7}
"""
    )
    text = "\n".join(problems({"ROUTER_PROVIDERS_FILE": str(path)}))
    assert "providers.a.kind: 'cohere' is not one of openai, azure, anthropic, gemini" in text
    assert "providers.b.base_url" in text
    assert "UNSET_KEY is not set" in text
    assert "providers.c: unknown keys timeout" in text
    assert "providers.d.options.api_version is required for an azure provider" in text
    assert "providers.e.options.default_max_tokens must be a positive integer, not 'lots'" in text
    assert "models.m1.provider: 'nowhere'" in text
    assert "models.m2.upstream_model" in text
    assert text.count("ROUTER_PROVIDERS_FILE=") == 8


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read the file"), ("providers: [", "not valid YAML"), ("- a\n- b\n", "must be a mapping")],
)
def test_unreadable_providers_file(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "providers.yaml"
    if content is not None:
        path.write_text(content)
    [problem] = problems({"ROUTER_PROVIDERS_FILE": str(path)})
    assert expected in problem


async def _run_router(env: dict[str, str]) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and not k.endswith("_API_KEY")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tollgate_router",
        env={**clean, "OTEL_SDK_DISABLED": "true", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_command_exits_2_with_a_clear_message_and_no_key() -> None:
    proc = await _run_router({"OPENAI_API_KEY": "sk-very-secret", "ROUTER_UPSTREAM_TIMEOUT_SECONDS": "-1"})
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    text = stderr.decode()
    assert "tollgate-router: invalid configuration" in text and "ROUTER_UPSTREAM_TIMEOUT_SECONDS" in text
    assert "Traceback" not in text and "sk-very-secret" not in text


async def test_the_command_serves_and_stops_cleanly_on_sigterm(mock: MockUpstream, tmp_path: Path) -> None:
    port = free_port()
    proc = await _run_router(
        {
            "ROUTER_MOCK_BASE_URL": mock.base_url,
            "ROUTER_GRPC_PORT": str(port),
            "OPENAI_API_KEY": "sk-never-logged",
            "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/router.db",
            "ROUTER_PRICE_CHECK": "off",  # no metering here (test_price_check.py runs the check)
        }
    )
    try:
        await wait_for_health(f"127.0.0.1:{port}", service="tollgate.router.v1.RouterService", timeout=30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            body = {"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "hi"}]}
            reply = await stub.Complete(
                pb.CompleteRequest(model="claude-3-5-haiku", body_json=json.dumps(body).encode())
            )
            assert reply.provider.startswith("mock") and reply.usage.total_tokens > 0
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        logs = stderr.decode()
        assert "router serving" in logs and "router stopped" in logs
        assert "sk-never-logged" not in logs
        assert '"hi"' not in logs
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
