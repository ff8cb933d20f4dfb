"""Billing with the real embedded broker: usage in through tollgate.usage.rated.v1, events out on
tollgate.billing.v1, and the rebuild from that log compared with the live database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from billing_support import MODEL, Database, FakeMeteringServer, eventually, hold_for, rated
from sqlalchemy import func, select, update
from tollgate.billing.v1 import billing_service_pb2 as pb
from tollgate.billing.v1 import billing_service_pb2_grpc as pb_grpc
from tollgate.billing.v1 import key_admin_pb2 as kpb
from tollgate.billing.v1 import tenancy_pb2 as tpb
from tollgate.events.v1 import billing_pb2
from tollgate_billing.app import BillingApp
from tollgate_billing.rebuild import TargetNotEmpty, read_log, rebuild
from tollgate_billing.tables import api_keys, holds, messaging, wallets
from tollgate_billing.usage_lag import KafkaEndOffsets, UsageLag
from tollgate_common.events import Envelope, Topics, envelope_for
from tollgate_common.kafka import make_producer

NANOS = 10**9


@dataclass
class Live:
    app: BillingApp
    stub: pb_grpc.BillingServiceStub
    bootstrap: str | None

    async def tenant(self, credit: int = NANOS) -> tuple[str, pb.CreateApiKeyResponse]:
        account = (await self.stub.CreateAccount(pb.CreateAccountRequest(name="Kafka"))).account
        await self.stub.AddCredits(pb.AddCreditsRequest(account_id=account.account_id, amount_nanos=credit,
                                                        idempotency_key="seed"))
        key = await self.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id=account.account_id))
        return account.account_id, key

    async def authorize(self, api_key: str, request_id: str) -> pb.AuthorizeResponse:
        return await self.stub.Authorize(pb.AuthorizeRequest(api_key=api_key, request_id=request_id, model=MODEL,
                                                             prompt_tokens=100))

    async def balance(self, account_id: str) -> pb.GetBalanceResponse:
        return await self.stub.GetBalance(pb.GetBalanceRequest(account_id=account_id))

    async def publish_rated(self, hold_id: str, account_id: str, key_id: str, price: int,
                            event_id: str | None = None, occurred_at_unix_ms: int = 0) -> None:
        """What metering does: a UsageRated CloudEvent on tollgate.usage.rated.v1, keyed by account."""
        message = rated(hold_id, account_id, key_id, price)
        message.occurred_at_unix_ms = occurred_at_unix_ms
        env = envelope_for(message, id=event_id or hold_id, service="metering", subject=account_id)
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(Topics.USAGE_RATED, env.data, key=account_id.encode(), headers=env.headers())
        finally:
            await producer.stop()

    async def all_published(self) -> bool:
        return await self.unpublished() == 0

    async def unpublished(self) -> int:
        assert self.app.engine is not None
        async with self.app.engine.connect() as conn:
            t = messaging.outbox
            return int((await conn.execute(
                select(func.count()).select_from(t).where(t.c.published_at_unix_ms.is_(None)))).scalar_one())


@asynccontextmanager
async def _live(settings_db: Database, metering: FakeMeteringServer, bootstrap: str | None,
                **overrides: object) -> AsyncIterator[Live]:
    app = BillingApp(settings_db.settings(metering_addr=metering.address, kafka_bootstrap_servers=bootstrap,
                                          **overrides))
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        yield Live(app, pb_grpc.BillingServiceStub(channel), bootstrap)
    finally:
        await channel.close()
        await app.stop()


@pytest.fixture
async def live(sqlite_db: Database, metering: FakeMeteringServer, broker: str) -> AsyncIterator[Live]:
    async with _live(sqlite_db, metering, broker) as x:
        yield x


async def _billing_log(bootstrap: str) -> list[tuple[bytes, Envelope]]:
    items: list[tuple[bytes, Envelope]] = []

    async def on_batch(batch: list[tuple[Envelope, object]]) -> None:
        items.extend((rec.key, env) for env, rec in batch)  # type: ignore[attr-defined]

    await read_log(bootstrap, on_batch)  # type: ignore[arg-type]
    return items


async def test_rated_usage_captures_the_hold_once_and_every_change_is_published(live: Live) -> None:
    account_id, key = await live.tenant()
    await live.authorize(key.api_key, "req_1")
    await live.authorize(key.api_key, "req_2")
    await live.publish_rated("req_1", account_id, key.key_id, 30_000)

    async def captured_once() -> bool:
        b = await live.balance(account_id)
        return b.held_nanos == hold_for(100) and b.balance_nanos == NANOS - 30_000
    await eventually(captured_once)

    # The same event again (a producer retry), and a different event for the same request: neither charges.
    await live.publish_rated("req_1", account_id, key.key_id, 30_000)
    await live.publish_rated("req_1", account_id, key.key_id, 30_000, event_id="req_1-rerated")
    # A later event on the same partition (same account key) proves the duplicates were read before it.
    await live.publish_rated("req_2", account_id, key.key_id, 0)

    async def second_released() -> pb.GetBalanceResponse | None:
        b = await live.balance(account_id)
        return b if b.held_nanos == 0 else None
    final = await eventually(second_released)
    assert final.balance_nanos == NANOS - 30_000
    ledger = await live.stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id=account_id))
    charges = [(e.ledger_account, e.amount_nanos) for e in ledger.entries if e.kind == "usage_charge"]
    assert sorted(charges) == sorted([(f"wallet:{account_id}", -30_000), ("revenue:usage", 30_000)])
    assert sum(e.amount_nanos for e in ledger.entries) == 0

    # Every one of those changes went out on tollgate.billing.v1, keyed and enveloped per the contract.
    async def all_published() -> list[tuple[bytes, Envelope]] | None:
        log = await _billing_log(live.bootstrap)
        return log if any(env.id == "hold.captured:req_2" for _, env in log) else None
    log = await eventually(all_published)
    ids = [env.id for _, env in log]
    assert ids[:2] == [f"account.created:{account_id}", ids[1]] and ids[1].startswith("credits.added:")
    assert ids[2:] == [f"api_key.created:{key.key_id}", "hold.placed:req_1", "hold.placed:req_2",
                       "hold.captured:req_1", "hold.captured:req_2"]
    for kafka_key, env in log:
        assert kafka_key == account_id.encode() and env.subject == account_id
        assert env.source == "//tollgate/billing" and env.type.startswith("tollgate.billing.v1.")
    placed = next(env for _, env in log if env.id == "hold.placed:req_1").message()
    assert isinstance(placed, billing_pb2.HoldPlaced) and placed.amount_nanos == hold_for(100)
    captured = next(env for _, env in log if env.id == "hold.captured:req_1").message()
    assert isinstance(captured, billing_pb2.HoldCaptured)
    assert (captured.captured_nanos, captured.released_nanos) == (30_000, hold_for(100) - 30_000)
    assert all(key.api_key.encode() not in env.data for _, env in log)


async def _tenancy_changes(live: Live, account_id: str) -> str:
    """Teams, projects and every kind of key change, over gRPC: the rebuild must reproduce them. Returns the id of
    the key it revoked."""
    team, project = billing_pb2.GROUP_KIND_TEAM, billing_pb2.GROUP_KIND_PROJECT
    await live.stub.CreateGroup(tpb.CreateGroupRequest(account_id=account_id, kind=team, group_id="ml", name="ML"))
    await live.stub.CreateGroup(tpb.CreateGroupRequest(account_id=account_id, kind=team, group_id="ops", name="Ops"))
    bot = await live.stub.CreateGroup(tpb.CreateGroupRequest(account_id=account_id, kind=project, name="Bot"))
    await live.stub.UpdateGroup(tpb.UpdateGroupRequest(account_id=account_id, kind=team, group_id="ml",
                                                       name="Machine learning", archived=True))
    member = await live.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id=account_id, team="ops",
                                                                 project=bot.group_id))
    await live.stub.UpdateApiKey(kpb.UpdateApiKeyRequest(account_id=account_id, key_id=member.key_id, label="moved",
                                                         replace_allowed_models=True, allowed_models=[MODEL],
                                                         project="", expires_at_unix_ms=4_102_444_800_000))
    await live.stub.RotateApiKey(kpb.RotateApiKeyRequest(account_id=account_id, key_id=member.key_id,
                                                         grace_seconds=600))
    doomed = await live.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id=account_id))
    await live.stub.RotateApiKey(kpb.RotateApiKeyRequest(account_id=account_id, key_id=doomed.key_id))
    await live.stub.RevokeApiKey(kpb.RevokeApiKeyRequest(account_id=account_id, key_id=doomed.key_id))
    return str(doomed.key_id)


async def _rebuild_cli(bootstrap: str, into: str, live_url: str) -> subprocess.CompletedProcess[str]:
    """The operator's command, in a thread: the live app shares this event loop and must keep running."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tollgate_billing", "rebuild", "--kafka", bootstrap, "--into", into,
         "--compare-with", live_url],
        capture_output=True, text=True, timeout=120,
    )


async def test_rebuild_from_the_log_equals_live_and_catches_a_tampered_database(
    sqlite_db: Database, metering: FakeMeteringServer, broker: str, tmp_path: Path
) -> None:
    # No maximum extension: holds expire at their TTL whether or not usage lags (the old behaviour), so that req_1
    # and req_2 are captured in full here, then one is reconciled by its late usage.
    async with _live(sqlite_db, metering, broker, hold_ttl_seconds=2, hold_sweep_seconds=0.2,
                     hold_max_extension_seconds=0) as live:
        account_id, key = await live.tenant(credit=2 * NANOS)
        other_account, other_key = await live.tenant()
        await live.stub.AddCredits(pb.AddCreditsRequest(account_id=account_id, amount_nanos=2 * NANOS,
                                                        idempotency_key="seed"))  # replay: no event
        for i in range(3):
            await live.authorize(key.api_key, f"req_{i}")
        await live.authorize(other_key.api_key, "req_other")
        await live.publish_rated("req_0", account_id, key.key_id, 12_345)
        await live.publish_rated("req_other", other_account, other_key.key_id, 0)
        await live.publish_rated("req_unheld", account_id, key.key_id, 99)
        revoked_key = await _tenancy_changes(live, account_id)

        async def settled() -> bool:  # req_1 and req_2 expire (TTL 1 s); the rest are captured
            b = await live.balance(account_id)
            return b.held_nanos == 0 and (await live.balance(other_account)).held_nanos == 0
        await eventually(settled)
        await live.publish_rated("req_1", account_id, key.key_id, 5_000)  # late: reconciled with a refund

        async def reconciled_and_published() -> bool:
            b = await live.balance(account_id)
            return b.balance_nanos == 2 * NANOS - 12_345 - 99 - hold_for(100) - 5_000 and await live.unpublished() == 0
        await eventually(reconciled_and_published)

        result = await rebuild(broker, f"sqlite:///{tmp_path}/rebuilt.db", compare_with=sqlite_db.url)
        assert result.reconciliation is not None
        assert result.equal, result.render()
        assert result.replay.applied >= 25 and not result.replay.problems
        assert "RESULT: EQUAL" in result.render()
        cli = await _rebuild_cli(broker, f"sqlite:///{tmp_path}/rebuilt-cli.db", sqlite_db.url)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "RESULT: EQUAL" in cli.stdout

        assert live.app.engine is not None
        async with live.app.engine.begin() as conn:  # someone edits the live balance behind the log's back
            await conn.execute(update(wallets).where(wallets.c.account_id == account_id)
                               .values(balance_nanos=wallets.c.balance_nanos + 1))
        tampered = await rebuild(broker, f"sqlite:///{tmp_path}/rebuilt-2.db", compare_with=sqlite_db.url)
        assert not tampered.equal
        assert account_id in tampered.render() and "wallets" in tampered.render()
        cli = await _rebuild_cli(broker, f"sqlite:///{tmp_path}/rebuilt-cli-2.db", sqlite_db.url)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert "RESULT: DIFFERENT" in cli.stdout and "balance_nanos" in cli.stdout

        async with live.app.engine.begin() as conn:  # ... and un-revokes a key: the rebuild names it
            await conn.execute(update(api_keys).where(api_keys.c.key_id == revoked_key)
                               .values(revoked_at_unix_ms=None))
        unrevoked = await rebuild(broker, f"sqlite:///{tmp_path}/rebuilt-3.db", compare_with=sqlite_db.url)
        assert not unrevoked.equal and revoked_key in unrevoked.render() and "revoked_at_unix_ms" in unrevoked.render()

        with pytest.raises(TargetNotEmpty):  # a rebuild never replays onto existing rows
            await rebuild(broker, f"sqlite:///{tmp_path}/rebuilt.db")


async def _hold(live: Live, hold_id: str) -> tuple[str, int, int]:
    assert live.app.engine is not None
    async with live.app.engine.connect() as conn:
        row = (await conn.execute(select(holds.c.status, holds.c.captured_nanos, holds.c.expires_at_unix_ms)
                                  .where(holds.c.hold_id == hold_id))).first()
    return ("missing", 0, 0) if row is None else (row.status, row.captured_nanos, row.expires_at_unix_ms)


async def test_holds_past_their_ttl_stay_open_while_usage_lags_then_close_at_the_rated_price(
    database: Database, metering: FakeMeteringServer, broker: str
) -> None:
    """An outage longer than the TTL: the sweep extends the holds whose usage has not caught up, the late usage
    captures them at the rated price; once usage is past a hold's deadline (or the maximum extension ran out) the
    hold is presumed lost and captured in full."""
    async with _live(database, metering, broker, hold_ttl_seconds=1, hold_sweep_seconds=3600,
                     hold_max_extension_seconds=60) as live:
        billing = live.app.billing
        assert billing is not None and billing.usage_lag is not None
        account_id, key = await live.tenant()
        await live.authorize(key.api_key, "req_late")
        status, _, deadline = await _hold(live, "req_late")
        assert status == "open"

        # Usage held back (nothing has been applied since the hold's deadline): the sweep past the TTL extends it.
        assert await billing.expire_due_holds(deadline + 5_000) == 0
        assert (await _hold(live, "req_late"))[0] == "open"
        b = await live.balance(account_id)
        assert (b.balance_nanos, b.held_nanos) == (NANOS, hold_for(100))

        # The lag clears: the late usage event captures the hold at the real price, not the hold.
        await live.publish_rated("req_late", account_id, key.key_id, 30_000, occurred_at_unix_ms=deadline - 100)

        async def captured() -> bool:
            return (await _hold(live, "req_late"))[:2] == ("captured", 30_000)
        await eventually(captured)
        b = await live.balance(account_id)
        assert (b.balance_nanos, b.held_nanos) == (NANOS - 30_000, 0)
        ledger = await live.stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id=account_id))
        assert {e.kind for e in ledger.entries} == {"credit_purchase", "usage_charge"}

        # A hold whose usage never comes: still extended while usage has not passed its deadline ...
        await live.authorize(key.api_key, "req_lost")
        lost_deadline = (await _hold(live, "req_lost"))[2]
        assert await billing.expire_due_holds(lost_deadline + 1_000) == 0
        # ... expired in full once usage that happened after its deadline has been applied (caught up).
        await live.publish_rated("req_after", account_id, key.key_id, 0, occurred_at_unix_ms=lost_deadline + 500)

        async def caught_up() -> bool:
            return billing.usage_lag is not None and billing.usage_lag.watermark_unix_ms >= lost_deadline + 500
        await eventually(caught_up)
        assert await billing.expire_due_holds(lost_deadline + 1_000) == 1
        assert (await _hold(live, "req_lost"))[:2] == ("expired", hold_for(100))


async def test_a_hold_is_extended_no_longer_than_the_maximum_extension(
    database: Database, metering: FakeMeteringServer, broker: str
) -> None:
    async with _live(database, metering, broker, hold_ttl_seconds=1, hold_sweep_seconds=3600,
                     hold_max_extension_seconds=60) as live:
        billing = live.app.billing
        assert billing is not None and billing.usage_lag is not None
        account_id, key = await live.tenant()
        await live.authorize(key.api_key, "req_quiet")
        deadline = (await _hold(live, "req_quiet"))[2]
        assert await billing.expire_due_holds(deadline + 59_999) == 0  # no usage at all since: still lagging
        assert await billing.expire_due_holds(deadline + 60_000) == 1  # however far behind usage is
        assert (await _hold(live, "req_quiet"))[:2] == ("expired", hold_for(100))
        assert (await live.balance(account_id)).balance_nanos == NANOS - hold_for(100)


async def test_usage_lag_counts_records_the_consumer_has_not_applied(
    database: Database, metering: FakeMeteringServer, broker: str
) -> None:
    """The offset signal: records on tollgate.usage.rated.v1 past billing's stored offsets mean lagging, even when
    the watermark is past a hold's deadline; a broker that does not answer means lagging too."""
    async with _live(database, metering, broker) as live:
        assert live.app.sessions is not None
        account_id, key = await live.tenant()
        await live.publish_rated("req_x", account_id, key.key_id, 0)

        async def applied() -> bool:
            return (await _hold(live, "req_x"))[0] == "captured"
        await eventually(applied)
        lag = live.app.billing.usage_lag if live.app.billing is not None else None
        assert lag is not None
        assert await lag.refresh() == 0
        lag.applied(10**13)
        assert await lag.expiry_cutoff(10**12) == 10**12  # caught up: nothing held back

        # The same topic seen by a group that has applied nothing: one record waiting.
        stuck = UsageLag(topic=Topics.USAGE_RATED, group_id="nobody", sessions=live.app.sessions, tables=messaging,
                         end_offsets=KafkaEndOffsets(broker))
        try:
            stuck.applied(10**13)
            assert await stuck.refresh() == 1
            assert await stuck.expiry_cutoff(10**12) == 0
        finally:
            await stuck.close()
        unreachable = UsageLag(topic=Topics.USAGE_RATED, group_id="billing", sessions=live.app.sessions,
                               tables=messaging, end_offsets=KafkaEndOffsets("127.0.0.1:1"))
        try:
            unreachable.applied(10**13)
            assert await unreachable.expiry_cutoff(10**12) == 0 and unreachable.unapplied is None
        finally:
            await unreachable.close()


@pytest.mark.postgres
async def test_rebuild_into_postgres_equals_live_postgres(
    postgres_db: Database, metering: FakeMeteringServer, broker: str
) -> None:
    from billing_support import postgres_database

    async with _live(postgres_db, metering, broker) as live:
        account_id, key = await live.tenant()
        await live.authorize(key.api_key, "req_pg")
        await live.publish_rated("req_pg", account_id, key.key_id, 777)
        await _tenancy_changes(live, account_id)

        async def done() -> bool:
            return (await live.balance(account_id)).held_nanos == 0 and await live.unpublished() == 0
        await eventually(done)
        async with postgres_database() as target:
            result = await rebuild(broker, target.url, into_schema=target.schema, compare_with=postgres_db.url,
                                   compare_schema=postgres_db.schema)
            assert result.equal, result.render()


async def test_a_broker_that_forgot_the_log_gets_it_again(
    sqlite_db: Database, metering: FakeMeteringServer, broker: str
) -> None:
    """Billing's kept outbox is its durable log: a broker that lost it (an embedded one restarted) gets it back."""
    async with _live(sqlite_db, metering, None) as offline:
        account_id, _ = await offline.tenant()
        assert offline.app.engine is not None
        async with offline.app.engine.begin() as conn:  # as if published to a broker that has since forgotten
            await conn.execute(update(messaging.outbox).values(published_at_unix_ms=1))
    async with _live(sqlite_db, metering, broker):
        async def republished() -> list[str] | None:
            ids = [env.id for _, env in await _billing_log(broker)]
            return ids if len(ids) >= 3 else None
        ids = await eventually(republished)
        assert ids[0] == f"account.created:{account_id}" and len(ids) == 3
        assert sum(1 for i in ids if i.startswith("credits.added:")) == 1


async def test_sigterm_stops_gracefully_and_flushes_the_outbox(
    tmp_path: Path, metering: FakeMeteringServer, broker: str
) -> None:
    from tollgate_common.grpc import wait_for_health
    from tollgate_dev.ports import free_port

    port = free_port()
    env = {**os.environ, "BILLING_GRPC_PORT": str(port), "BILLING_GRPC_HOST": "127.0.0.1",
           "BILLING_DATABASE_URL": f"sqlite:///{tmp_path}/proc.db", "BILLING_KAFKA_BOOTSTRAP_SERVERS": broker,
           "BILLING_METERING_ADDR": metering.address, "OTEL_SDK_DISABLED": "true"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tollgate_billing", env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await wait_for_health(f"127.0.0.1:{port}", timeout=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.BillingServiceStub(channel)
            await stub.CreateAccount(pb.CreateAccountRequest(name="sig", account_id="acct_sigterm"))
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, out.decode()
        assert b"billing stopped" in out
        ids = [e.id for _, e in await _billing_log(broker)]
        assert "account.created:acct_sigterm" in ids
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_environment_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "BILLING_GRPC_PORT": "not-a-port", "BILLING_HOLD_TTL_SECONDS": "0",
           "BILLING_DATABASE_URL": "mysql://x/y"}
    done = subprocess.run([sys.executable, "-m", "tollgate_billing"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "BILLING_GRPC_PORT" in done.stderr and "BILLING_HOLD_TTL_SECONDS" in done.stderr
    assert "BILLING_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr
