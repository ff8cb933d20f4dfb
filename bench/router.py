"""The router alone: what it adds over calling the mock upstream directly, and how many calls it carries.

Called by ``make bench`` (``bench.run``) against the running platform's router over gRPC (the way ingress calls
it), with the same request as the direct calls to the mock. Prints figures; asserts nothing.

- added latency at concurrency 1: p50/p99 of ``Complete`` minus a direct non-streaming HTTP call to the mock, and
  of the first ``StreamComplete`` message minus the direct stream's first byte;
- calls per second through the router at concurrency ``concurrency``, non-streaming and streaming.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import open_channel
from tollgate_common.internal_auth import InternalAuth, InternalKeys

from .run import BODY, STREAM_BODY, Sample, measure

__all__ = ["run_router_bench"]


def _request(body: dict[str, object]) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        request_id="bench_" + uuid.uuid4().hex,
        account_id="acct_bench",
        model=str(body["model"]),
        body_json=json.dumps(body).encode(),
    )


async def _grpc_measure(
    stub: pb_grpc.RouterServiceStub, body: dict[str, object], *, concurrency: int, requests: int | None = None,
    seconds: float | None = None, stream: bool = False,
) -> Sample:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds if seconds else None
    left = {"n": requests if requests is not None else 1 << 60}

    async def one() -> float:
        start = time.perf_counter()
        if stream:
            first: float | None = None
            async for _ in stub.StreamComplete(_request(body), timeout=30):
                if first is None:
                    first = time.perf_counter() - start
            return (first or 0.0) * 1000
        await stub.Complete(_request(body), timeout=30)
        return (time.perf_counter() - start) * 1000

    async def worker() -> None:
        nonlocal errors
        while left["n"] > 0 and (deadline is None or time.perf_counter() < deadline):
            left["n"] -= 1
            try:
                latencies.append(await one())
            except grpc.aio.AioRpcError:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Sample(latencies, errors, time.perf_counter() - start)


async def run_router_bench(
    router_addr: str, mock_url: str, *, n_latency: int, seconds: float, concurrency: int, internal_secret: str = ""
) -> None:
    direct = f"{mock_url}/v1/chat/completions"
    direct_headers = {"Authorization": "Bearer mock"}
    # As ingress: its caller token on every call (the router serves no one else).
    async with open_channel(router_addr, InternalAuth("ingress", InternalKeys(internal_secret))) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        await _grpc_measure(stub, BODY, concurrency=4, requests=100)  # warm up
        d1 = await measure(direct, direct_headers, BODY, concurrency=1, requests=n_latency)
        r1 = await _grpc_measure(stub, BODY, concurrency=1, requests=n_latency)
        d_first = await measure(direct, direct_headers, STREAM_BODY, concurrency=1, requests=n_latency,
                                first_byte=True)
        r_first = await _grpc_measure(stub, STREAM_BODY, concurrency=1, requests=n_latency, stream=True)
        print(f"\nrouter alone (gRPC, as ingress calls it) {'direct p50':>16} {'router p50':>11} "
              f"{'added p50':>10} {'added p99':>10}")
        for label, d, r in (
            ("non-streaming latency, concurrency 1", d1, r1),
            ("streaming first message, concurrency 1", d_first, r_first),
        ):
            print(f"{label:46} {d.pct(50):9.2f}ms {r.pct(50):9.2f}ms {r.pct(50) - d.pct(50):8.2f}ms "
                  f"{r.pct(99) - d.pct(99):8.2f}ms   (errors {d.errors}/{r.errors})")
        print(f"router throughput at concurrency {concurrency}, {seconds:.0f} s each:")
        for label, body, stream in (("non-streaming", BODY, False), ("streaming", STREAM_BODY, True)):
            s = await _grpc_measure(stub, body, concurrency=concurrency, seconds=seconds, stream=stream)
            print(f"  {label:14} {s.rps:8.1f} calls/s   p50 {s.pct(50):7.2f} ms   p99 {s.pct(99):7.2f} ms   "
                  f"errors {s.errors}")
