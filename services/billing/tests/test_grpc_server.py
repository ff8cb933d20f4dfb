"""BillingService over real gRPC, priced from a fake MeteringService over real gRPC: what ingress sees.

Status codes and ``tollgate-reason`` trailers are the contract ingress maps to HTTP; the concurrency tests show that
concurrent Authorize calls can never overspend, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from billing_support import MODEL, OTHER_MODEL, Database, FakeMeteringServer, hold_for, start_fake_metering
from tollgate.billing.v1 import billing_service_pb2 as pb
from tollgate.billing.v1 import billing_service_pb2_grpc as pb_grpc
from tollgate.billing.v1 import key_admin_pb2 as kpb
from tollgate.billing.v1 import tenancy_pb2 as tpb
from tollgate.events.v1.billing_pb2 import GROUP_KIND_PROJECT, GROUP_KIND_TEAM
from tollgate_billing.app import BillingApp
from tollgate_common.grpc import error_reason, retry_after
from tollgate_dev.ports import free_port

NANOS = 10**9


@dataclass
class Client:
    app: BillingApp
    stub: pb_grpc.BillingServiceStub

    async def account_with_key(self, credit: int = NANOS, **key_fields: object) -> tuple[str, pb.CreateApiKeyResponse]:
        account = (await self.stub.CreateAccount(pb.CreateAccountRequest(name="Acme"))).account
        if credit:
            await self.stub.AddCredits(pb.AddCreditsRequest(account_id=account.account_id, amount_nanos=credit,
                                                            idempotency_key="seed"))
        for kind, field in ((GROUP_KIND_TEAM, "team"), (GROUP_KIND_PROJECT, "project")):
            if key_fields.get(field):  # a key's team and project must exist in its account
                await self.stub.CreateGroup(tpb.CreateGroupRequest(
                    account_id=account.account_id, kind=kind, group_id=str(key_fields[field]),
                    name=str(key_fields[field])))
        key = await self.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id=account.account_id, label="t",
                                                                  **key_fields))  # type: ignore[arg-type]
        return account.account_id, key

    async def authorize(self, api_key: str, request_id: str, prompt: int = 100, max_out: int = 0,
                        model: str = MODEL) -> pb.AuthorizeResponse:
        return await self.stub.Authorize(pb.AuthorizeRequest(
            api_key=api_key, request_id=request_id, model=model, prompt_tokens=prompt, max_output_tokens=max_out))

    async def balance(self, account_id: str) -> pb.GetBalanceResponse:
        return await self.stub.GetBalance(pb.GetBalanceRequest(account_id=account_id))


async def _client(db: Database, metering: FakeMeteringServer) -> AsyncIterator[Client]:
    app = BillingApp(db.settings(metering_addr=metering.address))
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        yield Client(app, pb_grpc.BillingServiceStub(channel))
    finally:
        await channel.close()
        await app.stop()


@pytest.fixture
async def client(sqlite_db: Database, metering: FakeMeteringServer) -> AsyncIterator[Client]:
    async for c in _client(sqlite_db, metering):
        yield c


@pytest.fixture
async def any_client(database: Database, metering: FakeMeteringServer) -> AsyncIterator[Client]:
    """The same gRPC tests on SQLite and on PostgreSQL."""
    async for c in _client(database, metering):
        yield c


async def _status(call: object) -> tuple[grpc.StatusCode, str, int | None]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code(), error_reason(err.value), retry_after(err.value)


async def test_authorize_over_grpc_places_the_hold(client: Client, metering: FakeMeteringServer) -> None:
    account_id, key = await client.account_with_key(team="ml", project="bot")
    reply = await client.authorize(key.api_key, "req_1")
    assert (reply.account_id, reply.key_id, reply.hold_id) == (account_id, key.key_id, "req_1")
    assert (reply.hold_amount_nanos, reply.currency, reply.team, reply.project) == (hold_for(100), "USD", "ml", "bot")
    balance = await client.balance(account_id)
    assert (balance.balance_nanos, balance.held_nanos, balance.available_nanos) == (
        NANOS, hold_for(100), NANOS - hold_for(100))
    assert metering.servicer.calls >= 1


async def test_errors_carry_the_status_and_reason_ingress_maps(client: Client) -> None:
    account_id, key = await client.account_with_key(allowed_models=[MODEL], rate_limit_rpm=2)
    assert await _status(client.authorize("tg-unknown", "r0")) == (grpc.StatusCode.UNAUTHENTICATED,
                                                                   "invalid_api_key", None)
    assert await _status(client.authorize(key.api_key, "r1", model=OTHER_MODEL)) == (
        grpc.StatusCode.PERMISSION_DENIED, "model_not_allowed", None)
    _, open_key = await client.account_with_key()
    assert await _status(client.authorize(open_key.api_key, "r2", model="nope")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "model_not_priced", None)  # refused, never served free
    assert await _status(client.authorize(key.api_key, "r3", prompt=2_000_000_000_000)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "insufficient_balance", None)
    await client.authorize(key.api_key, "r4", prompt=1, max_out=1)
    await client.authorize(key.api_key, "r5", prompt=1, max_out=1)  # r3, refused for money, took no slot
    code, reason, after = await _status(client.authorize(key.api_key, "r6", prompt=1, max_out=1))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
    assert after is not None and 1 <= after <= 60
    assert await _status(client.stub.AddCredits(pb.AddCreditsRequest(account_id=account_id, amount_nanos=0))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", None)
    assert await _status(client.stub.AddCredits(pb.AddCreditsRequest(account_id="acct_nope", amount_nanos=5))) == (
        grpc.StatusCode.NOT_FOUND, "account_not_found", None)
    assert await _status(client.stub.GetBalance(pb.GetBalanceRequest(account_id="acct_nope"))) == (
        grpc.StatusCode.NOT_FOUND, "account_not_found", None)
    _, limited = await client.account_with_key(has_limit=True, limit_nanos=hold_for(1, 1) - 1)
    assert await _status(client.authorize(limited.api_key, "r6", prompt=1, max_out=1)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "key_limit_exceeded", None)


async def test_add_credits_over_grpc_is_idempotent(client: Client) -> None:
    account_id, _ = await client.account_with_key(credit=0)
    request = pb.AddCreditsRequest(account_id=account_id, amount_nanos=3 * NANOS, idempotency_key="stripe_pi_1",
                                   description="top-up")
    first, second = await asyncio.gather(client.stub.AddCredits(request), client.stub.AddCredits(request))
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert first.transaction_id == second.transaction_id
    third = await client.stub.AddCredits(request)
    assert third.replayed and third.balance_nanos == 3 * NANOS
    assert (await client.balance(account_id)).balance_nanos == 3 * NANOS
    ledger = await client.stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id=account_id))
    assert sorted((e.ledger_account, e.amount_nanos) for e in ledger.entries) == [
        ("funding:external", -3 * NANOS), (f"wallet:{account_id}", 3 * NANOS)]


async def test_create_account_with_id_and_key_info(client: Client) -> None:
    req = pb.CreateAccountRequest(name="Demo", account_id="acct_demo")
    first = await client.stub.CreateAccount(req)
    again = await client.stub.CreateAccount(req)
    assert first.account == again.account and first.account.currency == "USD"
    key = await client.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id="acct_demo", label="demo",
                                                                has_limit=True, limit_nanos=NANOS))
    assert key.api_key.startswith("tg-") and len(key.api_key) == 46 and key.prefix == key.api_key[:12]
    await client.stub.AddCredits(pb.AddCreditsRequest(account_id="acct_demo", amount_nanos=2 * NANOS))
    await client.authorize(key.api_key, "req_k")
    info = await client.stub.GetKeyInfo(pb.GetKeyInfoRequest(api_key=key.api_key))
    assert (info.key_id, info.account_id, info.label, info.currency) == (key.key_id, "acct_demo", "demo", "USD")
    assert info.balance_nanos == 2 * NANOS - hold_for(100)
    assert (info.usage_nanos, info.has_limit, info.limit_nanos) == (0, True, NANOS)
    assert info.limit_remaining_nanos == NANOS - hold_for(100)
    assert await _status(client.stub.GetKeyInfo(pb.GetKeyInfoRequest(api_key="tg-x"))) == (
        grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key", None)


async def test_the_account_admin_flag_round_trips_through_create_and_key_info(client: Client) -> None:
    await client.stub.CreateAccount(pb.CreateAccountRequest(name="Admins", account_id="acct_adm"))
    admin = await client.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id="acct_adm", account_admin=True))
    plain = await client.stub.CreateApiKey(pb.CreateApiKeyRequest(account_id="acct_adm"))
    admin_info = await client.stub.GetKeyInfo(pb.GetKeyInfoRequest(api_key=admin.api_key))
    plain_info = await client.stub.GetKeyInfo(pb.GetKeyInfoRequest(api_key=plain.api_key))
    assert (admin_info.key_id, admin_info.account_id, admin_info.account_admin) == (admin.key_id, "acct_adm", True)
    assert (plain_info.key_id, plain_info.account_admin) == (plain.key_id, False)


async def test_price_book_unavailable_until_metering_answers(sqlite_db: Database) -> None:
    port = free_port()
    app = BillingApp(sqlite_db.settings(metering_addr=f"127.0.0.1:{port}"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            c = Client(app, pb_grpc.BillingServiceStub(channel))
            _, key = await c.account_with_key()
            assert await _status(c.authorize(key.api_key, "r1")) == (
                grpc.StatusCode.UNAVAILABLE, "price_book_unavailable", None)
            # metering comes up on the configured address: billing picks the book up on its own
            import grpc as _grpc
            from billing_support import FakeMetering, price_book_reply
            from tollgate.metering.v1 import metering_service_pb2_grpc as mpb_grpc

            server = _grpc.aio.server()
            mpb_grpc.add_MeteringServiceServicer_to_server(FakeMetering(price_book_reply()), server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            try:
                for _ in range(200):
                    try:
                        reply = await c.authorize(key.api_key, "r2")
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert error_reason(exc) == "price_book_unavailable"
                        await asyncio.sleep(0.1)
                assert reply.hold_amount_nanos == hold_for(100)
            finally:
                await server.stop(0)
    finally:
        await app.stop()


# --- concurrency: N holds' worth of balance, 3N concurrent calls ----------------------------------------------

N = 8


async def _race(client: Client, api_key: str, prefix: str) -> tuple[int, list[tuple[grpc.StatusCode, str]]]:
    calls = [client.authorize(api_key, f"{prefix}_{i}", prompt=100, max_out=0) for i in range(3 * N)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = sum(1 for r in results if isinstance(r, pb.AuthorizeResponse))
    failures = [(r.code(), error_reason(r)) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    unexpected = [r for r in results if not isinstance(r, pb.AuthorizeResponse | grpc.aio.AioRpcError)]
    assert not unexpected, unexpected
    return ok, failures


async def test_concurrent_authorize_never_overspends_the_balance(any_client: Client) -> None:
    account_id, key = await any_client.account_with_key(credit=N * hold_for(100))
    ok, failures = await _race(any_client, key.api_key, "bal")
    assert ok == N
    assert failures == [(grpc.StatusCode.FAILED_PRECONDITION, "insufficient_balance")] * (2 * N)
    balance = await any_client.balance(account_id)
    assert balance.held_nanos == N * hold_for(100)
    assert balance.available_nanos == 0


async def test_concurrent_authorize_never_exceeds_the_key_limit(any_client: Client) -> None:
    account_id, key = await any_client.account_with_key(credit=100 * N * hold_for(100), has_limit=True,
                                                        limit_nanos=N * hold_for(100))
    ok, failures = await _race(any_client, key.api_key, "lim")
    assert ok == N
    assert failures == [(grpc.StatusCode.FAILED_PRECONDITION, "key_limit_exceeded")] * (2 * N)
    info = await any_client.stub.GetKeyInfo(pb.GetKeyInfoRequest(api_key=key.api_key))
    assert info.limit_remaining_nanos == 0
    assert (await any_client.balance(account_id)).held_nanos == N * hold_for(100)


async def test_concurrent_retries_of_one_request_hold_once(any_client: Client) -> None:
    account_id, key = await any_client.account_with_key()
    replies = await asyncio.gather(*[any_client.authorize(key.api_key, "req_retry") for _ in range(6)])
    assert {r.hold_id for r in replies} == {"req_retry"}
    assert (await any_client.balance(account_id)).held_nanos == hold_for(100)


async def test_price_book_client_reads_metering_and_tolerates_it_being_down(metering: FakeMeteringServer) -> None:
    """The fake metering serves the price book over real gRPC (what billing's client reads)."""
    from tollgate_billing.price_book import MeteringPriceBook

    book = MeteringPriceBook(metering.address)
    try:
        assert book.current() is None
        assert await book.refresh()
        current = book.current()
        assert current is not None and current.price_for(MODEL).resale_output_price_nanos == 700
    finally:
        await book.close()
    other = await start_fake_metering()
    await other.server.stop(0)
    unreachable = MeteringPriceBook(other.address, timeout_seconds=0.5)
    try:
        assert not await unreachable.refresh() and unreachable.current() is None
    finally:
        await unreachable.close()


async def test_api_keys_never_reach_the_logs(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    _, key = await client.account_with_key(rate_limit_rpm=1)
    await client.authorize(key.api_key, "req_log")
    await _status(client.authorize(key.api_key, "req_log_2"))  # rate limited
    await _status(client.authorize(key.api_key + "x", "req_log_3"))  # unknown key
    await client.stub.GetKeyInfo(pb.GetKeyInfoRequest(api_key=key.api_key))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert key.api_key not in text and key.api_key[3:] not in text
    assert key.key_id in text  # ids are what the logs carry


async def test_key_and_group_rpcs_carry_the_status_and_reason_ingress_maps(client: Client) -> None:
    account_id, key = await client.account_with_key(team="ml")
    other_account, other_key = await client.account_with_key()
    s = client.stub
    listed = await s.ListApiKeys(kpb.ListApiKeysRequest(account_id=account_id))
    assert [(k.key_id, k.team, k.status) for k in listed.keys] == [(key.key_id, "ml", "active")]
    assert key.api_key not in str(listed)
    assert await _status(s.GetApiKey(kpb.GetApiKeyRequest(account_id=account_id, key_id=other_key.key_id))) == (
        grpc.StatusCode.NOT_FOUND, "key_not_found", None)
    assert await _status(s.CreateApiKey(pb.CreateApiKeyRequest(account_id=account_id, project="ghost"))) == (
        grpc.StatusCode.NOT_FOUND, "project_not_found", None)
    assert await _status(s.CreateGroup(tpb.CreateGroupRequest(account_id=account_id, kind=GROUP_KIND_TEAM,
                                                              group_id="ml", name="Other name"))) == (
        grpc.StatusCode.ALREADY_EXISTS, "group_exists", None)
    await s.UpdateGroup(tpb.UpdateGroupRequest(account_id=account_id, kind=GROUP_KIND_TEAM, group_id="ml",
                                               archived=True))
    assert await _status(s.CreateApiKey(pb.CreateApiKeyRequest(account_id=account_id, team="ml"))) == (
        grpc.StatusCode.FAILED_PRECONDITION, "group_archived", None)

    rotated = await s.RotateApiKey(kpb.RotateApiKeyRequest(account_id=account_id, key_id=key.key_id,
                                                           grace_seconds=60))
    assert rotated.api_key != key.api_key and rotated.key.previous_prefix == key.prefix
    await client.authorize(key.api_key, "r_old_in_grace")
    await client.authorize(rotated.api_key, "r_new")
    revoked = await s.RevokeApiKey(kpb.RevokeApiKeyRequest(account_id=account_id, key_id=key.key_id))
    assert revoked.status == "revoked" and revoked.previous_valid_until_unix_ms == 0
    for secret in (key.api_key, rotated.api_key):
        assert await _status(client.authorize(secret, f"r_after_{secret[-4:]}")) == (
            grpc.StatusCode.UNAUTHENTICATED, "api_key_revoked", None)
    assert await _status(s.UpdateApiKey(kpb.UpdateApiKeyRequest(account_id=account_id, key_id=key.key_id,
                                                                label="x"))) == (
        grpc.StatusCode.FAILED_PRECONDITION, "key_revoked", None)
    await client.authorize(other_key.api_key, "r_other")  # the other account's key is untouched
    assert other_account != account_id
