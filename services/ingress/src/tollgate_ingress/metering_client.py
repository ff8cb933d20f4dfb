"""Ingress's typed client of metering: the usage report behind the analytics routes (not on the request path)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from tollgate.metering.v1 import metering_service_pb2 as mpb
from tollgate.metering.v1 import metering_service_pb2_grpc as mpb_grpc

from .channels import CallMetadata, UnaryCaller

__all__ = ["MeteringClient"]


class MeteringClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: CallMetadata, timeout: float) -> None:
        self._stub = mpb_grpc.MeteringServiceStub(channel)
        self._call = UnaryCaller("metering", metadata, timeout)

    async def usage_report(
        self, account_id: str, key_id: str, from_unix_ms: int, to_unix_ms: int, group_by: Sequence[str],
        page_size: int, page_token: str,
    ) -> mpb.GetUsageReportResponse:
        return await self._call(self._stub.GetUsageReport, mpb.GetUsageReportRequest(
            account_id=account_id, key_id=key_id, from_unix_ms=from_unix_ms, to_unix_ms=to_unix_ms,
            group_by=list(group_by), page_size=page_size, page_token=page_token,
        ))
