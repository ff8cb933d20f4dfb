"""Policy answers ingress only; and outside development it needs a real match-hash key, not the public one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_common.internal_auth import CALLER_KEY, InternalKeys, mint_token
from tollgate_policy import PolicyApp, Settings

SECRET = "policy-test-internal-secret-0123456789"


def as_(service: str) -> tuple[tuple[str, str], ...]:
    return ((CALLER_KEY, mint_token(SECRET, service)),)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[pb_grpc.PolicyServiceStub]:
    app = PolicyApp(Settings(database_url=f"sqlite:///{tmp_path / 'policy.db'}", grpc_host="127.0.0.1", grpc_port=0,
                             internal_keys=InternalKeys(SECRET)))
    await app.start()
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield pb_grpc.PolicyServiceStub(channel)
    await app.stop()


async def test_inspect_and_policy_changes_need_ingress(stub: pb_grpc.PolicyServiceStub) -> None:
    inspect = pb.InspectRequest(request_id="r", account_id="acc", texts=["my card is 4111 1111 1111 1111"])
    for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (as_("router"), grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Inspect(inspect, metadata=metadata)
        assert info.value.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetPolicy(pb.SetPolicyRequest(account_id="acc"), metadata=metadata)
        assert info.value.code() == code
    reply = await stub.Inspect(inspect, metadata=as_("ingress"))
    assert reply.findings


def _run_policy(extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "POLICY_"))}
    env.update(TOLLGATE_ENV="production", TOLLGATE_INTERNAL_SECRET=SECRET,
               POLICY_DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", **extra)
    return subprocess.run([sys.executable, "-m", "tollgate_policy"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_outside_development_policy_exits_2_without_a_hash_key(tmp_path: Path) -> None:
    proc = _run_policy({}, tmp_path)
    assert proc.returncode == 2
    assert "POLICY_HASH_KEY is required" in proc.stderr
