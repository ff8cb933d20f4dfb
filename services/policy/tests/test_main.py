"""``python -m tollgate_policy`` as an operator runs it: bad settings exit 2, SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.grpc import wait_for_health
from tollgate_dev.ports import free_port
from tollgate_dlp.limits import Limits
from tollgate_policy.config import Settings


def env(**values: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLICY_")}
    base["OTEL_SDK_DISABLED"] = "true"
    return base | values


def test_bad_settings_exit_2_naming_every_problem() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tollgate_policy"],
        env=env(POLICY_GRPC_PORT="eighty", POLICY_DATABASE_URL="mysql://db/x", POLICY_LOG_LEVEL="loud"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    for name in ("POLICY_GRPC_PORT", "POLICY_DATABASE_URL", "POLICY_LOG_LEVEL"):
        assert name in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_defaults_and_overrides() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().grpc_port == 50052 and Settings().database_url == "sqlite:///var/policy.db"
    s = Settings.from_env({"POLICY_GRPC_PORT": "6000", "POLICY_CACHE_TTL_SECONDS": "5", "POLICY_LOG_LEVEL": "debug"})
    assert (s.grpc_port, s.cache_ttl_seconds, s.log_level) == (6000, 5.0, "DEBUG")


def test_the_inspect_limits_come_from_the_environment() -> None:
    env = {
        "POLICY_MAX_INSPECT_CHARS": "5000",
        "POLICY_MAX_INSPECT_TEXTS": "7",
        "POLICY_SCAN_OFFLOAD_CHARS": "100",
        "POLICY_SCAN_THREADS": "3",
        "POLICY_LARGE_SCANS_PER_ACCOUNT": "2",
        "POLICY_LARGE_SCAN_QUEUE_PER_ACCOUNT": "0",
    }
    assert Settings.from_env(env).limits == Limits(
        max_texts=7,
        max_chars=5000,
        offload_chars=100,
        scan_threads=3,
        large_scans_per_account=2,
        large_scan_queue_per_account=0,
    )


async def test_serves_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tollgate_policy",
        env=env(POLICY_GRPC_PORT=str(port), POLICY_DATABASE_URL=f"sqlite:///{tmp_path / 'policy.db'}"),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_health(f"127.0.0.1:{port}", timeout=30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await pb_grpc.PolicyServiceStub(channel).Inspect(
                pb.InspectRequest(request_id="req_1", account_id="acc_1", texts=["4111111111111111"])
            )
        assert list(reply.redacted_texts) == ["[PAYMENT_CARD_1]"]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0
        assert b"policy stopped" in stderr
        assert b"4111111111111111" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
