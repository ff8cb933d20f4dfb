"""MeteringService through a real gRPC server (Kafka deliberately absent: queries must not depend on it), and the
process's lifecycle: ``python -m tollgate_metering`` serves health and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tollgate.metering.v1 import metering_service_pb2 as pb
from tollgate.metering.v1 import metering_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import error_reason, open_channel, wait_for_health
from tollgate_dev.ports import free_port
from tollgate_metering.app import MeteringApp
from tollgate_metering.config import Settings

BOOK = """\
version: acme-1
currency: USD
markup_bps: 2500
models:
  small: {input_price_nanos: 3, output_price_nanos: 7, max_output_tokens: 1024}
  big: {input_price_nanos: 3000, output_price_nanos: 15000, max_output_tokens: 8192}
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "METERING_GRPC_HOST": "127.0.0.1",
        "METERING_GRPC_PORT": "0",
        "METERING_DATABASE_URL": f"sqlite:///{tmp_path}/metering.db",
        # Nothing listens here: the server must answer queries while Kafka is away.
        "METERING_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        **extra,
    }


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[MeteringApp]:
    app = MeteringApp(Settings.from_env(_env(tmp_path)))
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def stub(app: MeteringApp) -> AsyncIterator[pb_grpc.MeteringServiceStub]:
    channel = open_channel(app.address)
    yield pb_grpc.MeteringServiceStub(channel)
    await channel.close()


async def test_get_price_book_returns_upstream_and_rounded_up_resale_prices(
    app: MeteringApp, stub: pb_grpc.MeteringServiceStub
) -> None:
    reply = await stub.GetPriceBook(pb.GetPriceBookRequest())
    assert (reply.version, reply.currency, reply.markup_bps) == ("demo-embed-2026-12", "USD", 2000)
    prices = {p.model: p for p in reply.prices}
    assert set(prices) == {"gpt-4o-mini", "gpt-4o", "deepseek-chat", "claude-3-5-haiku", "gemini-2.0-flash",
                           "text-embedding-3-small", "text-embedding-3-large", "gemini-embedding-001"}
    small = prices["text-embedding-3-small"]  # an embedding model: input only, output priced 0 (resale 0 too)
    assert (small.resale_input_price_nanos, small.resale_output_price_nanos) == (24, 0)
    mini = prices["gpt-4o-mini"]
    assert (mini.input_price_nanos, mini.output_price_nanos, mini.max_output_tokens) == (150, 600, 16384)
    assert (mini.resale_input_price_nanos, mini.resale_output_price_nanos) == (180, 720)
    ds = prices["deepseek-chat"]
    assert (ds.resale_input_price_nanos, ds.resale_output_price_nanos, ds.max_output_tokens) == (324, 1320, 8192)


async def _served_book(tmp_path: Path, book: str) -> pb.GetPriceBookResponse:
    """The price book a metering process started with ``book`` as its file serves over gRPC."""
    (tmp_path / "book.yaml").write_text(book)
    app = MeteringApp(Settings.from_env(_env(tmp_path, METERING_PRICE_BOOK_FILE=str(tmp_path / "book.yaml"))))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            return await pb_grpc.MeteringServiceStub(channel).GetPriceBook(pb.GetPriceBookRequest())
    finally:
        await app.stop()


async def test_a_configured_book_is_served_with_its_markup(tmp_path: Path) -> None:
    reply = await _served_book(tmp_path, BOOK)
    prices = {p.model: (p.resale_input_price_nanos, p.resale_output_price_nanos) for p in reply.prices}
    assert (reply.version, reply.markup_bps) == ("acme-1", 2500)
    assert prices == {"small": (4, 9), "big": (3750, 18750)}  # 3.75 → 4, 8.75 → 9


async def test_a_models_own_markup_sets_its_resale_prices(tmp_path: Path) -> None:
    """Billing sizes holds from these resale prices, so a per-model markup reaches the hold too."""
    reply = await _served_book(tmp_path, BOOK.replace(
        "small: {input_price_nanos: 3, output_price_nanos: 7, max_output_tokens: 1024}",
        "small: {input_price_nanos: 3, output_price_nanos: 7, max_output_tokens: 1024, markup_bps: 10000}"))
    prices = {p.model: (p.resale_input_price_nanos, p.resale_output_price_nanos, p.markup_bps) for p in reply.prices}
    assert prices == {"small": (6, 14, 10000), "big": (3750, 18750, 2500)}


async def test_get_usage_summary_sums_per_key_and_model(
    app: MeteringApp, stub: pb_grpc.MeteringServiceStub, make_usage: Any
) -> None:
    assert app.metering is not None
    await app.metering.replay_usage([
        make_usage("r1", account="acc_s"),
        make_usage("r2", account="acc_s", prompt=10, completion=10),
        make_usage("r3", account="acc_s", key="key_2", model="gpt-4o", prompt=1, completion=1),
        make_usage("r4", account="acc_t"),
    ])
    reply = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(account_id="acc_s"))
    rows = [(r.key_id, r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.upstream_cost_nanos,
             r.resale_price_nanos) for r in reply.rows]
    assert rows == [
        ("key_1", "gpt-4o-mini", 2, 1010, 510, 450_000 + 7_500, 540_000 + 9_000),
        ("key_2", "gpt-4o", 1, 1, 1, 12_500, 15_000),
    ]
    empty = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(account_id="acc_never_seen"))
    assert list(empty.rows) == []


async def test_a_missing_account_id_is_invalid_argument_with_a_reason(stub: pb_grpc.MeteringServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetUsageSummary(pb.GetUsageSummaryRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err.value) == "invalid_argument"
    assert "account_id" in (err.value.details() or "")


async def test_health_reports_the_service_as_serving(app: MeteringApp) -> None:
    async with grpc.aio.insecure_channel(app.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="tollgate.metering.v1.MeteringService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_process_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env |= _env(tmp_path, METERING_GRPC_PORT=str(port))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tollgate_metering", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for_health(f"127.0.0.1:{port}", service="tollgate.metering.v1.MeteringService", timeout=30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await pb_grpc.MeteringServiceStub(channel).GetPriceBook(pb.GetPriceBookRequest())
        assert reply.version == "demo-embed-2026-12"
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        code = proc.returncode
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_a_changed_book_under_a_stored_version_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "book.yaml").write_text(BOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env |= _env(tmp_path, METERING_PRICE_BOOK_FILE=str(tmp_path / "book.yaml"))
    first = MeteringApp(Settings.from_env(env))
    await first.start()
    await first.stop()
    (tmp_path / "book.yaml").write_text(BOOK.replace("markup_bps: 2500", "markup_bps: 2400"))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tollgate_metering"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "price book version 'acme-1' is already stored with different content" in done.stderr
    assert "Traceback" not in done.stderr
