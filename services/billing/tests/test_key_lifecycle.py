"""Key lifecycle (list, get, update, revoke, expiry, rotation with a grace period) against real databases: ONE
contract, run on SQLite and on PostgreSQL, and every change rebuilt from the log into the same state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from billing_support import MODEL, OTHER_MODEL, Database, FakeClock, assert_rebuild_equals_live, static_prices
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate.events.v1 import billing_pb2
from tollgate_billing import errors, repository
from tollgate_billing.application import Billing
from tollgate_billing.group_admin import GroupAdmin
from tollgate_billing.key_admin import KeyAdmin
from tollgate_billing.tables import messaging, metadata
from tollgate_common.db import create_engine, create_schema

NANOS = 10**9


class Monotonic:
    """The key cache's clock, under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    engine: AsyncEngine
    billing: Billing
    keys: KeyAdmin
    clock: FakeClock
    monotonic: Monotonic

    @property
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def account(self, name: str = "Acme") -> str:
        account, _ = await self.billing.create_account(name)
        await self.billing.add_credits(account.account_id, NANOS, f"seed-{account.account_id}")
        return account.account_id

    async def authorize(self, api_key: str, request_id: str, model: str = MODEL) -> str:
        return (await self.billing.authorize(api_key, request_id, model, 10, 10)).key_id

    async def outbox_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(messaging.outbox.c.event_id).order_by(messaging.outbox.c.id))
            return [r[0] for r in rows]

    def replica(self) -> Billing:
        """A second billing process on the same database (its own key cache)."""
        return Billing(self.engine, static_prices(), key_cache_seconds=1.0, clock=self.clock,
                       monotonic=self.monotonic)


class TestKeyLifecycle:
    @pytest.fixture
    async def rig(self, db: Database) -> AsyncIterator[Rig]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        clock, monotonic = FakeClock(), Monotonic()
        billing = Billing(engine, static_prices(), key_cache_seconds=1.0, clock=clock, monotonic=monotonic)
        yield Rig(engine, billing, KeyAdmin(billing), clock, monotonic)
        await engine.dispose()

    async def test_list_and_get_show_everything_but_the_secret(self, rig: Rig) -> None:
        account = await rig.account()
        await GroupAdmin(rig.billing).create_group(account, billing_pb2.GROUP_KIND_TEAM, "ML", "ml")
        a = await rig.billing.create_api_key(account, label="ci", allowed_models=[MODEL], team="ml")
        b = await rig.billing.create_api_key(account, label="batch", expires_at_unix_ms=rig.now_ms + 60_000)
        listed = await rig.keys.list_keys(account)
        assert [k.key_id for k in listed] == [a.key_id, b.key_id]
        assert [(k.label, k.prefix, k.status(rig.now_ms)) for k in listed] == [
            ("ci", a.prefix, "active"), ("batch", b.prefix, "active")]
        got = await rig.keys.get_key(account, b.key_id)
        assert got.expires_at_unix_ms == rig.now_ms + 60_000 and got.allowed_models == ()
        assert (await rig.keys.get_key(account, a.key_id)).allowed_models == (MODEL,)
        assert a.api_key not in repr(listed) and b.api_key not in repr(got)

    async def test_a_key_of_another_account_is_not_found_through_this_account(self, rig: Rig) -> None:
        mine, theirs = await rig.account("Mine"), await rig.account("Theirs")
        their_key = await rig.billing.create_api_key(theirs)
        for call in (rig.keys.get_key(mine, their_key.key_id), rig.keys.revoke_key(mine, their_key.key_id),
                     rig.keys.rotate_key(mine, their_key.key_id, 0),
                     rig.keys.update_key(mine, their_key.key_id, label="mine now")):
            with pytest.raises(errors.KeyNotFound):
                await call
        with pytest.raises(errors.AccountNotFound):
            await rig.keys.list_keys("acct_missing")
        await rig.authorize(their_key.api_key, "req_still_theirs")  # untouched

    async def test_a_revoked_key_is_refused_at_once_even_though_it_was_cached(self, rig: Rig) -> None:
        account = await rig.account()
        key = await rig.billing.create_api_key(account, label="leaked")
        await rig.authorize(key.api_key, "req_1")  # the grant is now in the key cache
        revoked = await rig.keys.revoke_key(account, key.key_id)
        assert revoked.status(rig.now_ms) == "revoked" and revoked.revoked_at_unix_ms == rig.now_ms
        with pytest.raises(errors.RevokedApiKey):
            await rig.authorize(key.api_key, "req_2")
        with pytest.raises(errors.RevokedApiKey):
            await rig.billing.get_key_info(key.api_key)
        again = await rig.keys.revoke_key(account, key.key_id)  # idempotent: no second event
        assert again.revoked_at_unix_ms == revoked.revoked_at_unix_ms
        assert [e for e in await rig.outbox_ids() if e.startswith("api_key.revoked")] == [
            f"api_key.revoked:{key.key_id}"]
        with pytest.raises(errors.KeyRevoked):
            await rig.keys.update_key(account, key.key_id, label="back")
        with pytest.raises(errors.KeyRevoked):
            await rig.keys.rotate_key(account, key.key_id, 60)
        assert await rig.keys.list_keys(account) == []
        assert [k.key_id for k in await rig.keys.list_keys(account, include_revoked=True)] == [key.key_id]

    async def test_another_replica_refuses_a_revoked_key_within_its_cache_ttl(self, rig: Rig) -> None:
        account = await rig.account()
        key = await rig.billing.create_api_key(account)
        other = rig.replica()
        await other.authorize(key.api_key, "req_1", MODEL, 10, 10)  # cached on the other replica
        await rig.keys.revoke_key(account, key.key_id)
        rig.monotonic.now += 1.0  # the other replica's cached grant is at most key_cache_seconds (1 s) old
        with pytest.raises(errors.RevokedApiKey):
            await other.authorize(key.api_key, "req_2", MODEL, 10, 10)

    async def test_a_key_stops_at_its_expiry_and_an_update_can_move_it(self, rig: Rig) -> None:
        account = await rig.account()
        with pytest.raises(errors.InvalidArgument):
            await rig.billing.create_api_key(account, expires_at_unix_ms=rig.now_ms - 1)
        key = await rig.billing.create_api_key(account, expires_at_unix_ms=rig.now_ms + 60_000)
        await rig.authorize(key.api_key, "req_1")
        rig.clock.advance(60)  # wall clock only: the cached grant itself knows when it ends
        with pytest.raises(errors.ExpiredApiKey):
            await rig.authorize(key.api_key, "req_2")
        assert (await rig.keys.get_key(account, key.key_id)).status(rig.now_ms) == "expired"
        updated = await rig.keys.update_key(account, key.key_id, expires_at_unix_ms=0)  # never expires
        assert updated.expires_at_unix_ms is None and updated.revision == 1
        await rig.authorize(key.api_key, "req_3")

    async def test_rotation_returns_a_new_secret_and_the_old_one_works_until_the_grace_ends(self, rig: Rig) -> None:
        account = await rig.account()
        key = await rig.billing.create_api_key(account, label="svc")
        await rig.authorize(key.api_key, "req_old_cached")
        rotated = await rig.keys.rotate_key(account, key.key_id, grace_seconds=30)
        assert rotated.api_key != key.api_key and rotated.api_key.startswith("tg-")
        assert rotated.key.key_id == key.key_id and rotated.key.prefix == rotated.api_key[:12]
        assert rotated.key.previous_prefix == key.prefix and rotated.key.grace_until(rig.now_ms) == rig.now_ms + 30_000
        assert await rig.authorize(rotated.api_key, "req_new") == key.key_id
        rig.clock.advance(29)
        assert await rig.authorize(key.api_key, "req_old_in_grace") == key.key_id
        rig.clock.advance(1)
        with pytest.raises(errors.ExpiredApiKey):
            await rig.authorize(key.api_key, "req_old_after_grace")
        rig.monotonic.now += 5  # and not only from the cache
        with pytest.raises(errors.ExpiredApiKey):
            await rig.authorize(key.api_key, "req_old_after_grace_2")
        await rig.authorize(rotated.api_key, "req_new_2")
        info = await rig.billing.get_key_info(rotated.api_key)
        assert info.key.grant.key_id == key.key_id  # same key: same usage, limits and policy scope

    async def test_rotating_again_ends_the_previous_grace_and_zero_grace_ends_it_now(self, rig: Rig) -> None:
        account = await rig.account()
        first = await rig.billing.create_api_key(account)
        second = await rig.keys.rotate_key(account, first.key_id, grace_seconds=600)
        await rig.authorize(first.api_key, "req_first_in_grace")
        third = await rig.keys.rotate_key(account, first.key_id, grace_seconds=0)
        for secret in (first.api_key, second.api_key):
            with pytest.raises(errors.InvalidApiKey):
                await rig.authorize(secret, f"req_{secret[-6:]}")
        await rig.authorize(third.api_key, "req_third")
        with pytest.raises(errors.InvalidArgument):
            await rig.keys.rotate_key(account, first.key_id, grace_seconds=-1)

    async def test_label_and_allowed_models_change_and_apply_from_the_next_request(self, rig: Rig) -> None:
        account = await rig.account()
        key = await rig.billing.create_api_key(account, label="old")
        await rig.authorize(key.api_key, "req_any", OTHER_MODEL)
        updated = await rig.keys.update_key(account, key.key_id, label="new", allowed_models=[MODEL])
        assert (updated.label, updated.allowed_models) == ("new", (MODEL,))
        with pytest.raises(errors.ModelNotAllowed):
            await rig.authorize(key.api_key, "req_other", OTHER_MODEL)
        await rig.authorize(key.api_key, "req_allowed", MODEL)
        same = await rig.keys.update_key(account, key.key_id, label="new")  # no change, no event
        assert same.revision == updated.revision
        with pytest.raises(errors.InvalidArgument):
            await rig.keys.update_key(account, key.key_id, label="x" * 201)
        cleared = await rig.keys.update_key(account, key.key_id, allowed_models=[])
        assert cleared.allowed_models == ()
        await rig.authorize(key.api_key, "req_other_again", OTHER_MODEL)

    async def test_a_change_decided_on_an_old_revision_is_refused(self, rig: Rig) -> None:
        account = await rig.account()
        key = await rig.billing.create_api_key(account)
        await rig.keys.update_key(account, key.key_id, label="first")
        stale = billing_pb2.ApiKeyUpdated(key_id=key.key_id, account_id=account, revision=1, label="lost update",
                                          updated_at_unix_ms=rig.now_ms)
        with pytest.raises(errors.ConcurrentUpdate):
            async with rig.engine.begin() as conn:
                await repository.record(conn, stale)
        assert (await rig.keys.get_key(account, key.key_id)).label == "first"

    async def test_every_key_change_is_an_event_and_the_rebuild_equals_the_live_keys(
        self, rig: Rig, tmp_path: Path
    ) -> None:
        account = await rig.account()
        a = await rig.billing.create_api_key(account, label="a", expires_at_unix_ms=rig.now_ms + 10_000)
        b = await rig.billing.create_api_key(account, label="b")
        c = await rig.billing.create_api_key(account, label="c")
        await rig.keys.update_key(account, a.key_id, label="a2", allowed_models=[MODEL], expires_at_unix_ms=0)
        await rig.keys.rotate_key(account, b.key_id, grace_seconds=60)
        await rig.keys.rotate_key(account, b.key_id, grace_seconds=0)
        await rig.keys.rotate_key(account, c.key_id, grace_seconds=60)
        await rig.keys.revoke_key(account, c.key_id)
        ids = await rig.outbox_ids()
        assert [i for i in ids if i.startswith("api_key.") and ".created:" not in i] == [
            f"api_key.updated:{a.key_id}:1", f"api_key.rotated:{b.key_id}:1", f"api_key.rotated:{b.key_id}:2",
            f"api_key.rotated:{c.key_id}:1", f"api_key.revoked:{c.key_id}"]
        async with rig.engine.connect() as conn:
            values = [bytes(r[0]) for r in await conn.execute(select(messaging.outbox.c.value))]
        assert all(secret.encode() not in v for v in values for secret in (a.api_key, b.api_key, c.api_key))
        stats, _ = await assert_rebuild_equals_live(rig.engine, tmp_path)
        assert stats.applied == len(ids)
