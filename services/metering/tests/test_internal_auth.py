"""Metering answers billing (the price book) and ingress (usage), each only what its table says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tollgate.metering.v1 import metering_service_pb2 as pb
from tollgate.metering.v1 import metering_service_pb2_grpc as pb_grpc
from tollgate_common.internal_auth import CALLER_KEY, mint_token
from tollgate_dev.ports import free_port
from tollgate_metering.app import MeteringApp
from tollgate_metering.config import Settings

SECRET = "metering-test-internal-secret-0123456789"


def as_(service: str) -> tuple[tuple[str, str], ...]:
    return ((CALLER_KEY, mint_token(SECRET, service)),)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[pb_grpc.MeteringServiceStub]:
    app = MeteringApp(Settings.from_env({
        "METERING_GRPC_HOST": "127.0.0.1",
        "METERING_GRPC_PORT": "0",
        "METERING_DATABASE_URL": f"sqlite:///{tmp_path}/metering.db",
        "METERING_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nothing there; queries still answer
        "TOLLGATE_INTERNAL_SECRET": SECRET,
    }))
    await app.start()
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield pb_grpc.MeteringServiceStub(channel)
    await app.stop()


async def test_each_rpc_answers_only_its_callers(stub: pb_grpc.MeteringServiceStub) -> None:
    book = await stub.GetPriceBook(pb.GetPriceBookRequest(), metadata=as_("billing"))
    assert book.prices
    for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (as_("ingress"), grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetPriceBook(pb.GetPriceBookRequest(), metadata=metadata)
        assert info.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetUsageSummary(pb.GetUsageSummaryRequest(account_id="acc"), metadata=as_("router"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    summary = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(account_id="acc"), metadata=as_("ingress"))
    assert list(summary.rows) == []
