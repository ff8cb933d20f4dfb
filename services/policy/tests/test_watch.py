"""``GetPolicyState`` and ``WatchPolicies``: what ingress decides in process with, through a real gRPC server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tollgate.policy.v1 import policy_service_pb2 as pb
from tollgate.policy.v1 import policy_service_pb2_grpc as pb_grpc
from tollgate_dlp.document import Action, PolicySet
from tollgate_dlp.state import PolicyState
from tollgate_dlp.wire import state_from_update
from tollgate_policy import PolicyApp, Settings
from tollgate_policy.watch import MAX_QUEUED, PolicyChanges

BLOCK_EMAIL = json.dumps({"rules": {"email": "block"}})


async def next_update(call: grpc.aio.UnaryStreamCall, *, skip_heartbeats: bool = True) -> pb.PolicyStateUpdate:
    while True:
        update = await asyncio.wait_for(call.read(), timeout=5)
        assert update is not grpc.aio.EOF
        if not (skip_heartbeats and update.heartbeat):
            return update


async def test_an_unknown_account_has_the_default_state(stub: pb_grpc.PolicyServiceStub) -> None:
    update = await stub.GetPolicyState(pb.GetPolicyStateRequest(account_id="acc_new"))
    state = state_from_update(update)
    assert (state.account_id, state.head, state.enforced.version, state.shadow) == ("acc_new", 0, 0, None)
    assert state.enforced.resolve().actions == state.enforced.default("acc_new").resolve().actions


async def test_the_watch_opens_with_a_heartbeat_then_pushes_each_change(stub: pb_grpc.PolicyServiceStub) -> None:
    call = stub.WatchPolicies(pb.WatchPoliciesRequest())
    first = await next_update(call, skip_heartbeats=False)
    assert first.heartbeat and first.heartbeat_interval_ms == 5000 and not first.account_id

    await stub.PutScopePolicy(pb.PutScopePolicyRequest(account_id="acc_1", scope="account", document_json=BLOCK_EMAIL))
    enforced = state_from_update(await next_update(call))
    assert (enforced.account_id, enforced.head, enforced.shadow) == ("acc_1", 1, None)
    assert enforced.enforced.rules["email"] is Action.BLOCK

    shadow_doc = json.dumps({"rules": {"email": "flag"}})
    await stub.PutScopePolicy(
        pb.PutScopePolicyRequest(account_id="acc_1", scope="account", document_json=shadow_doc, shadow=True)
    )
    shadowed = state_from_update(await next_update(call))
    assert shadowed.head == 2 and shadowed.enforced.version == 1
    assert shadowed.shadow is not None and shadowed.shadow.rules["email"] is Action.FLAG

    await stub.DiscardShadow(pb.ShadowRequest(account_id="acc_1"))
    discarded = state_from_update(await next_update(call))
    assert (discarded.head, discarded.enforced.version, discarded.shadow) == (3, 1, None)
    call.cancel()


async def test_heartbeats_keep_coming_while_nothing_changes(tmp_path: Path) -> None:
    app = PolicyApp(
        Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", grpc_host="127.0.0.1", grpc_port=0,
                 watch_heartbeat_seconds=0.05)
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = pb_grpc.PolicyServiceStub(channel).WatchPolicies(pb.WatchPoliciesRequest())
            beats = [await next_update(call, skip_heartbeats=False) for _ in range(4)]
            assert all(b.heartbeat and b.heartbeat_interval_ms == 50 for b in beats)
            call.cancel()
    finally:
        await app.stop()


async def test_stopping_policy_ends_open_watches_at_once(tmp_path: Path) -> None:
    app = PolicyApp(Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", grpc_host="127.0.0.1", grpc_port=0))
    await app.start()
    async with grpc.aio.insecure_channel(app.address) as channel:
        call = pb_grpc.PolicyServiceStub(channel).WatchPolicies(pb.WatchPoliciesRequest())
        await next_update(call, skip_heartbeats=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await app.stop()
        assert loop.time() - started < app.settings.shutdown_grace_seconds  # the open watch did not hold the stop
        assert await asyncio.wait_for(call.read(), timeout=5) is grpc.aio.EOF


@pytest.fixture
async def two_replicas(tmp_path: Path) -> AsyncIterator[tuple[pb_grpc.PolicyServiceStub, pb_grpc.PolicyServiceStub]]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    apps = [PolicyApp(Settings(database_url=url, grpc_host="127.0.0.1", grpc_port=0)) for _ in range(2)]
    for app in apps:
        await app.start()
    channels = [grpc.aio.insecure_channel(app.address) for app in apps]
    try:
        yield pb_grpc.PolicyServiceStub(channels[0]), pb_grpc.PolicyServiceStub(channels[1])
    finally:
        for channel in channels:
            await channel.close()
        for app in apps:
            await app.stop()


async def test_get_policy_state_reads_the_database_not_the_replicas_cache(
    two_replicas: tuple[pb_grpc.PolicyServiceStub, pb_grpc.PolicyServiceStub],
) -> None:
    writer, reader = two_replicas
    # The reader caches the default first (its Inspect path would now serve it for the cache TTL).
    await reader.GetPolicy(pb.GetPolicyRequest(account_id="acc_1"))
    put = pb.PutScopePolicyRequest(account_id="acc_1", scope="account", document_json=BLOCK_EMAIL)
    await writer.PutScopePolicy(put)
    state = state_from_update(await reader.GetPolicyState(pb.GetPolicyStateRequest(account_id="acc_1")))
    assert state.head == 1 and state.enforced.rules["email"] is Action.BLOCK


async def test_a_watcher_that_falls_behind_is_cut_off_not_buffered_without_bound() -> None:
    changes = PolicyChanges(heartbeat_seconds=60)
    stream = changes.watch()
    assert await anext(stream) is None  # opened
    for version in range(MAX_QUEUED + 1):
        changes.publish(PolicyState(PolicySet("acc", version), None, version))
    assert changes.watchers == 0
    received = [state async for state in stream]
    assert len(received) == MAX_QUEUED - 1  # what was queued before the cut, then the stream ended
