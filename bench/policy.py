"""Policy alone: CPU milliseconds per Inspect of a real ``python -m tollgate_policy`` process under load.

``bench.cpu`` measures the whole stack, which on a shared machine is noisy and slow to run; this isolates the
process this benchmark is about. It starts the embedded broker and one policy process (SQLite, the outbox relayed
to the broker, internal auth on, as in the platform), drives ``--connections`` concurrent callers that each send
what ingress sends per chat request (an Inspect of the prompt, then one of the answer), and reads the policy
process's ``utime + stime`` (``/proc``) before and after the window. Prints Inspect calls/s and CPU ms per call
and per request (two calls). Asserts nothing.

    .venv/bin/python -m bench.policy [--seconds 5] [--connections 32] [--texts-kb 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.events import Topics
from tollgate_common.internal_auth import CALLER_KEY, mint_token
from tollgate_common.kafka import ensure_topics
from tollgate_dev.broker import EmbeddedBroker
from tollgate_dev.ports import free_port

from bench.cpu import MESSAGES, TICKS, _cpu_ticks

__all__ = ["main"]

ANSWER = "Hello! How can I help you today?"


async def _drive(port: int, metadata: tuple[tuple[str, str], ...], connections: int, seconds: float,
                 prompt: str) -> int:  # fmt: skip
    """Run the load for ``seconds``; the number of Inspect calls answered."""
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 120)
        stub = pb_grpc.PolicyServiceStub(channel)
        deadline = time.monotonic() + seconds

        async def caller(n: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < deadline:
                rid = f"bench-{n}-{i}"
                i += 1
                texts = [m["content"] for m in MESSAGES] + ([prompt] if prompt else [])
                await stub.Inspect(pb.InspectRequest(request_id=rid, account_id=f"acct-{n % 4}", key_id="key-1",
                                                     model="fake-gpt", texts=texts), metadata=metadata)  # fmt: skip
                await stub.Inspect(pb.InspectRequest(request_id=rid, account_id=f"acct-{n % 4}", key_id="key-1",
                                                     direction=pb.DIRECTION_RESPONSE, texts=[ANSWER]),
                                   metadata=metadata)  # fmt: skip
                done += 2

        await asyncio.gather(*(caller(n) for n in range(connections)))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--texts-kb", type=int, default=0, help="an extra prompt text of this many KB")
    args = parser.parse_args(argv)
    prompt = ("please summarize the quarterly report for each region " * 100)[: args.texts_kb * 1024]
    secret = secrets.token_urlsafe(32)
    metadata = ((CALLER_KEY, mint_token(secret, "ingress")),)
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(free_port(), log_path=Path(tmp) / "broker.log")
        bootstrap = broker.start()
        asyncio.run(ensure_topics(bootstrap, Topics.ALL))
        port = free_port()
        env = {**os.environ, "POLICY_DATABASE_URL": f"sqlite:///{Path(tmp) / 'policy.db'}",
               "POLICY_GRPC_HOST": "127.0.0.1", "POLICY_GRPC_PORT": str(port), "POLICY_LOG_LEVEL": "WARNING",
               "POLICY_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOLLGATE_INTERNAL_SECRET": secret}  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "tollgate_policy"], env=env)
        try:
            asyncio.run(_drive(port, metadata, args.connections, args.warmup, prompt))
            before = _cpu_ticks(process.pid)
            started = time.monotonic()
            calls = asyncio.run(_drive(port, metadata, args.connections, args.seconds, prompt))
            elapsed = time.monotonic() - started
            cpu_ms = (_cpu_ticks(process.pid) - before) * 1000 / TICKS
        finally:
            process.terminate()
            process.wait(10)
            broker.stop()
    per_call = cpu_ms / calls if calls else float("nan")
    print(f"policy alone, c={args.connections}, extra prompt {args.texts_kb} KB: {calls / elapsed:.0f} Inspect/s, "
          f"CPU {per_call:.3f} ms per Inspect, {2 * per_call:.3f} ms per chat request (prompt + answer)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
