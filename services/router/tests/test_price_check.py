"""The start-up price check: the catalogue against metering's price book (exit 2 on a routable model without a
price, or a declared price that disagrees with the book)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tollgate.metering.v1 import metering_service_pb2 as mpb
from tollgate.metering.v1 import metering_service_pb2_grpc as mpb_grpc
from tollgate_common.grpc import wait_for_health
from tollgate_dev.ports import free_port
from tollgate_router.catalogue_config import catalogue_from_env, catalogue_from_file
from tollgate_router.config import Settings
from tollgate_router.price_check import PriceCheckFailed, check_prices, price_problems

DEMO = ["gpt-4o-mini", "gpt-4o", "deepseek-chat", "claude-3-5-haiku", "gemini-2.0-flash", "text-embedding-3-small",
        "text-embedding-3-large", "gemini-embedding-001"]


def book(*models: str, input_price: int = 150, output_price: int = 600, currency: str = "USD",
         ) -> mpb.GetPriceBookResponse:
    return mpb.GetPriceBookResponse(version="v-test", currency=currency, markup_bps=2000, prices=[
        mpb.ModelPrice(model=m, input_price_nanos=input_price, output_price_nanos=output_price) for m in models])


PROVIDERS = """currency: USD
providers:
  up: {kind: openai, base_url: "http://127.0.0.1:1/v1"}
models:
  cheap: {provider: up, upstream_model: cheap-1, input_price_per_mtok: "0.15", output_price_per_mtok: "0.60"}
  other: {provider: up, upstream_model: other-1}
"""


def file_catalogue(tmp_path: Path, text: str = PROVIDERS):  # type: ignore[no-untyped-def]
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    catalogue, problems = catalogue_from_file(path, {})
    assert problems == []
    return catalogue


def test_every_demo_model_is_priced_in_a_book_that_has_them() -> None:
    catalogue, _ = catalogue_from_env("http://127.0.0.1:1/v1", {})
    assert price_problems(catalogue, book(*DEMO)) == []


def test_a_routable_model_without_a_price_is_named(tmp_path: Path) -> None:
    [problem] = price_problems(file_catalogue(tmp_path), book("cheap"))
    assert "without a price" in problem and "other" in problem and "model_not_priced" in problem


def test_declared_prices_that_agree_with_the_book_pass(tmp_path: Path) -> None:
    # $0.15 / million tokens = 150 nanos per token
    assert price_problems(file_catalogue(tmp_path), book("cheap", "other")) == []


def test_a_declared_price_that_disagrees_with_the_book_is_reported(tmp_path: Path) -> None:
    problems = price_problems(file_catalogue(tmp_path), book("cheap", "other", input_price=200))
    assert len(problems) == 1
    assert "cheap/up" in problems[0] and "input_price_per_mtok 0.15 USD" in problems[0] and "says 0.2" in problems[0]


def test_declared_prices_in_another_currency_are_reported(tmp_path: Path) -> None:
    [problem] = price_problems(file_catalogue(tmp_path), book("cheap", "other", currency="EUR"))
    assert "USD" in problem and "EUR" in problem


class _Metering(mpb_grpc.MeteringServiceServicer):  # type: ignore[misc]
    """Metering's GetPriceBook as the router's check reads it (over real gRPC)."""

    def __init__(self, reply: mpb.GetPriceBookResponse) -> None:
        self.reply = reply

    async def GetPriceBook(self, request: mpb.GetPriceBookRequest, context: object) -> mpb.GetPriceBookResponse:
        return self.reply


@pytest.fixture
async def metering() -> AsyncIterator[tuple[_Metering, str]]:
    servicer = _Metering(book(*DEMO))
    server = grpc.aio.server()
    mpb_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_required_raises_warn_logs_off_skips(tmp_path: Path, metering: tuple[_Metering, str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    servicer, addr = metering
    servicer.reply = book("cheap")
    catalogue = file_catalogue(tmp_path)
    with pytest.raises(PriceCheckFailed) as caught:
        await check_prices(catalogue, addr, None, mode="required", timeout_seconds=5)
    assert "other" in caught.value.problems[0]
    await check_prices(catalogue, addr, None, mode="warn", timeout_seconds=5)
    assert any("price check" in r.getMessage() for r in caplog.records)
    await check_prices(catalogue, "127.0.0.1:1", None, mode="off", timeout_seconds=0.1)  # not even asked


async def test_metering_that_never_answers_fails_the_check_within_the_timeout() -> None:
    catalogue, _ = catalogue_from_env("http://127.0.0.1:1/v1", {})
    with pytest.raises(PriceCheckFailed, match="cannot read metering's price book"):
        await check_prices(catalogue, f"127.0.0.1:{free_port()}", None, mode="required", timeout_seconds=1)


def test_the_mode_is_validated() -> None:
    from tollgate_common.config import ConfigError

    with pytest.raises(ConfigError, match="ROUTER_PRICE_CHECK"):
        Settings.from_env({"ROUTER_MOCK_BASE_URL": "http://127.0.0.1:1/v1", "ROUTER_PRICE_CHECK": "maybe"})


async def _run_router(env: dict[str, str]) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and not k.endswith("_API_KEY")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tollgate_router", env={**clean, "OTEL_SDK_DISABLED": "true", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def test_the_router_exits_2_naming_the_unpriced_model(tmp_path: Path, metering: tuple[_Metering, str]) -> None:
    servicer, addr = metering
    servicer.reply = book("cheap")
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    proc = await _run_router({"ROUTER_PROVIDERS_FILE": str(tmp_path / "providers.yaml"), "ROUTER_METERING_ADDR": addr,
                              "ROUTER_GRPC_PORT": str(free_port()),
                              "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/router.db"})
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    text = stderr.decode()
    assert proc.returncode == 2, text
    assert "tollgate-router: the catalogue does not match metering's price book" in text
    assert "other" in text and "Traceback" not in text


async def test_the_router_serves_when_every_model_is_priced(tmp_path: Path, metering: tuple[_Metering, str]) -> None:
    servicer, addr = metering
    servicer.reply = book("cheap", "other")
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    port = free_port()
    proc = await _run_router({"ROUTER_PROVIDERS_FILE": str(tmp_path / "providers.yaml"), "ROUTER_METERING_ADDR": addr,
                              "ROUTER_GRPC_PORT": str(port), "ROUTER_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"})
    try:
        await wait_for_health(f"127.0.0.1:{port}", service="tollgate.router.v1.RouterService", timeout=30)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)
