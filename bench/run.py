"""``make bench``: what Tollgate adds over a direct call to the upstream, and how much it carries.

The whole stack (five services and the broker) runs pinned to CPU 0 where ``taskset`` exists; the mock upstream and
this load generator run on CPU 1, so the figures are "Tollgate on one core". Prints figures; asserts nothing.

Measured:
- added latency at concurrency 1: p50/p99 of (through ingress) minus (direct to the mock upstream), non-streaming,
  and the same for time to first streamed byte;
- requests per second at concurrency 32 (and errors), non-streaming and streaming;
- the router alone over gRPC (``bench.router``): its added latency over the mock and its throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tollgate_dev.platform import Platform, PlatformConfig

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Give me one short sentence about toll gates."}],
    "max_tokens": 16,
}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


@dataclass
class Sample:
    latencies_ms: list[float]
    errors: int
    elapsed_s: float

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0


async def _one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, object],
               first_byte: bool) -> float:
    start = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            raise RuntimeError(f"HTTP {resp.status}")
        if first_byte:
            await resp.content.readany()
            ttfb = time.perf_counter() - start
            await resp.read()
            return ttfb * 1000
        await resp.read()
    return (time.perf_counter() - start) * 1000


async def measure(url: str, headers: dict[str, str], body: dict[str, object], *, concurrency: int,
                  requests: int | None = None, seconds: float | None = None, first_byte: bool = False) -> Sample:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds if seconds else None
    counter = {"left": requests if requests is not None else 1 << 60}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal errors
            while counter["left"] > 0 and (deadline is None or time.perf_counter() < deadline):
                counter["left"] -= 1
                try:
                    latencies.append(await _one(session, url, headers, body, first_byte))
                except Exception:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Sample(latencies, errors, elapsed)


def _pin_broker(platform: Platform, cpus: str) -> None:
    if platform.broker and platform.broker.process and shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-cp", cpus, str(platform.broker.process.pid)], capture_output=True,
                       check=False)


async def run_bench(platform: Platform, api_key: str, *, n_latency: int, seconds: float, concurrency: int) -> None:
    direct = f"{platform.mock_url}/v1/chat/completions"
    gateway = f"{platform.ingress_url}/v1/chat/completions"
    direct_headers = {"Authorization": "Bearer mock"}
    headers = {"Authorization": f"Bearer {api_key}"}

    # warm up both paths (connections, tokenizer, caches)
    await measure(gateway, headers, BODY, concurrency=4, requests=100)
    await measure(direct, direct_headers, BODY, concurrency=4, requests=100)

    d1 = await measure(direct, direct_headers, BODY, concurrency=1, requests=n_latency)
    g1 = await measure(gateway, headers, BODY, concurrency=1, requests=n_latency)
    d_ttfb = await measure(direct, direct_headers, STREAM_BODY, concurrency=1, requests=n_latency, first_byte=True)
    g_ttfb = await measure(gateway, headers, STREAM_BODY, concurrency=1, requests=n_latency, first_byte=True)
    rows = [
        ("non-streaming latency, concurrency 1", d1, g1),
        ("streaming time to first byte, concurrency 1", d_ttfb, g_ttfb),
    ]
    print(f"\n{'':46} {'direct p50':>11} {'gateway p50':>12} {'added p50':>10} {'added p99':>10}")
    for label, d, g in rows:
        print(f"{label:46} {d.pct(50):9.2f}ms {g.pct(50):10.2f}ms {g.pct(50) - d.pct(50):8.2f}ms "
              f"{g.pct(99) - d.pct(99):8.2f}ms   (errors {d.errors}/{g.errors})")

    print(f"\nthroughput at concurrency {concurrency}, {seconds:.0f} s each:")
    for label, body in (("non-streaming", BODY), ("streaming", STREAM_BODY)):
        s = await measure(gateway, headers, body, concurrency=concurrency, seconds=seconds)
        print(f"  {label:14} {s.rps:8.1f} requests/s   p50 {s.pct(50):7.2f} ms   p99 {s.pct(99):7.2f} ms   "
              f"errors {s.errors}")
    s = await measure(direct, direct_headers, BODY, concurrency=concurrency, seconds=seconds / 2)
    print(f"  {'mock direct':14} {s.rps:8.1f} requests/s   (the upstream's own ceiling on its core)")

    from .router import run_router_bench  # imported here: it reuses this module's helpers

    await run_router_bench(platform.grpc_addr("router"), platform.mock_url, n_latency=n_latency,
                           seconds=seconds / 2, concurrency=concurrency,
                           internal_secret=platform.config.internal_secret)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        config = PlatformConfig(
            var_dir=Path(tmp) / "var",
            admin_token="tga-" + secrets.token_urlsafe(16),
            ports={name: 0 for name in ("ingress", "router", "policy", "billing", "metering", "mock", "broker")},
            cpu_list="0" if pinned else None,
            mock_cpu_list="1" if pinned else None,
        )
        platform = Platform(config)
        platform.start()
        try:
            if pinned:
                _pin_broker(platform, "0")
            print("Tollgate benchmark: " + ("whole stack pinned to CPU 0; mock upstream and load generator on CPU 1"
                                            if pinned else "not pinned (no taskset or a single CPU)"))
            account = "acct_bench"
            platform.admin("POST", "/admin/v1/accounts", {"id": account, "name": "bench"})
            platform.admin("POST", f"/admin/v1/accounts/{account}/credits",
                           {"amount": "1000000", "idempotency_key": "bench-credit"})
            key = str(platform.admin("POST", f"/admin/v1/accounts/{account}/keys", {"label": "bench"})["key"])
            asyncio.run(run_bench(platform, key, n_latency=args.latency_requests, seconds=args.seconds,
                                  concurrency=args.concurrency))
        finally:
            platform.stop()
    from .dlp import main as dlp_main  # the DLP section: detection quality and scan speed (python -m bench.dlp)

    print()
    dlp_main(["--latency-requests", str(max(args.latency_requests, 300))])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
