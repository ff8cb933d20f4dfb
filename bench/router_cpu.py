"""The router alone: CPU milliseconds per call of the router process, driven over gRPC as ingress drives it.

The whole-stack figure (:mod:`bench.cpu`) needs all five services and is spread thin when the machine is busy;
this one starts only what a router call touches: the embedded broker (its attempts go to Kafka), the peer
yardstick's nginx upstream (``../shared/peer-bench``; the mock when nginx is missing) and one router process,
then calls ``Complete`` / ``StreamComplete`` from this process at a fixed concurrency. Router and broker run on
CPU 0, nginx and the load on CPU 1 (where ``taskset`` exists). Prints calls/s and CPU ms per call of the router
and of the broker (``utime + stime`` from ``/proc``). Asserts nothing.

    .venv/bin/python -m bench.router_cpu --seconds 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from tollgate.router.v1 import router_service_pb2 as pb
from tollgate.router.v1 import router_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import open_channel
from tollgate_common.internal_auth import InternalAuth, InternalKeys
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.ports import free_port, wait_for_port

from .cpu import MESSAGES, NGINX_PORT, NGINX_PROVIDERS, PEER_BENCH, TICKS, _cpu_ticks

__all__ = ["main"]


@contextlib.contextmanager
def private_nginx(tmp: Path, cpus: str | None) -> Iterator[int]:
    """The peer yardstick's nginx configuration on a port and prefix of our own (another run's nginx on the
    shared port may stop under us), started and stopped here; yields the port."""
    port = free_port()
    prefix = tmp / "nginx"
    (prefix / "body").mkdir(parents=True)
    conf = (PEER_BENCH / "nginx-fake-upstream.conf").read_text()
    conf = conf.replace(f"127.0.0.1:{NGINX_PORT}", f"127.0.0.1:{port}").replace("/tmp/benchnginx", str(prefix))
    (prefix / "nginx.conf").write_text(conf)
    argv = ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    subprocess.run(["taskset", "-c", cpus, *argv] if cpus else argv, check=True, capture_output=True)
    try:
        wait_for_port(port, timeout=10)
        yield port
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((prefix / "nginx.pid").read_text()), signal.SIGTERM)


async def _load(
    addr: str, secret: str, model: str, *, stream: bool, concurrency: int, seconds: float
) -> tuple[int, int, float]:
    """(calls done, errors, seconds) of ``concurrency`` callers looping for ``seconds``."""
    body: dict[str, object] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    body_json = json.dumps(body).encode()
    done = errors = 0
    async with open_channel(addr, InternalAuth("ingress", InternalKeys(secret))) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done, errors
            while time.perf_counter() < end:
                request = pb.CompleteRequest(
                    request_id="bench_" + uuid.uuid4().hex, account_id="acct_bench", model=model, body_json=body_json
                )
                try:
                    if stream:
                        async for _ in stub.StreamComplete(request, timeout=30):
                            pass
                    else:
                        await stub.Complete(request, timeout=30)
                    done += 1
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    if errors == 1:
                        print("first error:", exc.code().name, exc.details(), file=sys.stderr)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return done, errors, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="measured windows per mode")
    parser.add_argument("--hold", action="store_true", help="keep the router up after the load (for py-spy)")
    args = parser.parse_args(argv)
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {1})
    nginx = shutil.which("nginx") is not None and (PEER_BENCH / "nginx-fake-upstream.conf").exists()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-bench-router-")))
        broker = EmbeddedBroker(log_path=tmp / "broker.log")
        bootstrap = broker.start()
        stack.callback(broker.stop)
        secret = secrets.token_urlsafe(32)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
        env["ROUTER_PRICE_CHECK"] = "off"  # the router alone: no metering to compare its catalogue with
        env |= {
            "PYTHONUNBUFFERED": "1",
            "TOLLGATE_INTERNAL_SECRET": secret,
            "ROUTER_GRPC_PORT": str(port),
            "ROUTER_DATABASE_URL": f"sqlite:///{tmp / 'router.db'}",
            "ROUTER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ROUTER_LOG_LEVEL": "WARNING",
        }
        if os.environ.get("BENCH_NO_KAFKA"):
            env.pop("ROUTER_KAFKA_BOOTSTRAP_SERVERS")
        if nginx:
            nginx_port = stack.enter_context(private_nginx(tmp, "1" if pinned else None))
            (tmp / "providers.yaml").write_text(NGINX_PROVIDERS.replace(f":{NGINX_PORT}/", f":{nginx_port}/"))
            env["ROUTER_PROVIDERS_FILE"] = str(tmp / "providers.yaml")
            models = ("fake-gpt", "fake-gpt-stream")
        else:
            mock_port = free_port()
            mock = subprocess.Popen(
                [sys.executable, "-m", "tollgate_dev.mock_upstream", "--host", "127.0.0.1", "--port", str(mock_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(mock.terminate)
            wait_for_port(mock_port, timeout=30)
            env["ROUTER_MOCK_BASE_URL"] = f"http://127.0.0.1:{mock_port}/v1"
            models = ("gpt-4o-mini", "gpt-4o-mini")
        argv_router = [sys.executable, "-m", "tollgate_router"]
        if pinned:
            argv_router = ["taskset", "-c", "0", *argv_router]
            subprocess.run(
                ["taskset", "-a", "-cp", "0", str(broker.process.pid)],  # type: ignore[union-attr]
                capture_output=True,
                check=False,
            )
        with open(tmp / "router.log", "wb") as out:
            router = subprocess.Popen(argv_router, env=env, stdout=out, stderr=subprocess.STDOUT)
        stack.callback(router.wait, 20)
        stack.callback(router.terminate)
        wait_for_port(port, timeout=60)
        pids = {"router": router.pid, "broker": broker.process.pid}  # type: ignore[union-attr]
        addr = f"127.0.0.1:{port}"
        print(
            f"router alone ({'nginx' if nginx else 'mock'} upstream, concurrency {args.concurrency}, "
            f"{'router+broker on CPU 0, load+upstream on CPU 1' if pinned else 'not pinned'}; router pid "
            f"{router.pid})",
            flush=True,
        )
        print(f"{'mode':14} {'calls/s':>8} {'errors':>6} {'router ms/call':>15} {'broker ms/call':>15}")
        for stream, model in ((False, models[0]), (True, models[1])):
            asyncio.run(_load(addr, secret, model, stream=stream, concurrency=args.concurrency, seconds=args.warmup))
            for _ in range(args.repeat):
                before = {name: _cpu_ticks(pid) for name, pid in pids.items()}
                done, errors, seconds = asyncio.run(
                    _load(addr, secret, model, stream=stream, concurrency=args.concurrency, seconds=args.seconds)
                )
                per = {
                    name: (_cpu_ticks(pid) - before[name]) * 1000 / TICKS / max(1, done) for name, pid in pids.items()
                }
                print(
                    f"{'streaming' if stream else 'non-streaming':14} {done / seconds:8.1f} {errors:6d} "
                    f"{per['router']:15.3f} {per['broker']:15.3f}",
                    flush=True,
                )
        if args.hold:
            print("router pid", router.pid, "at", addr, "secret", secret, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
