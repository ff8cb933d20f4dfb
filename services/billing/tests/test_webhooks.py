"""Alert webhooks against real databases (SQLite and PostgreSQL) and a real HTTP receiver that checks signatures:
set / rotate / delete as events (never the secret), delivery of BalanceLow signed Stripe's way, retries with
backoff against a receiver that fails first, a worker killed after claiming (the next one delivers), giving up
after the stated attempts, timeouts, the SSRF rules, and the webhooks table rebuilt from the log."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from billing_support import Database, FakeClock, assert_rebuild_equals_live, static_prices
from sqlalchemy import select
from tollgate_billing import errors, webhook_queue
from tollgate_billing.alert_admin import AlertAdmin
from tollgate_billing.application import Billing
from tollgate_billing.tables import messaging, metadata, webhook_deliveries
from tollgate_billing.webhook_admin import WebhookAdmin, WebhookNotFound
from tollgate_billing.webhook_config import WebhookSettings
from tollgate_billing.webhook_rules import RetryPolicy, address_allowed, parse_networks, sign, url_problem
from tollgate_billing.webhooks import AddressRefused, CheckedResolver, WebhookWorker
from tollgate_common.db import create_engine, create_schema
from webhook_receiver import Receiver, start_receiver, verify

LOCAL = parse_networks("127.0.0.0/8")


def test_urls_to_the_internal_plane_are_refused_unless_allowed() -> None:
    for url in ("https://127.0.0.1/x", "https://10.1.2.3/", "https://169.254.169.254/latest", "https://[::1]/",
                "https://[::ffff:127.0.0.1]/", "https://100.64.0.1/", "https://192.168.1.1/", "ftp://example.com/",
                "http://example.com/hook", "https://user:pw@example.com/", "https://localhost/", "", "https:///x"):
        assert url_problem(url, ()) is not None, url
    assert url_problem("https://hooks.example.com/tollgate", ()) is None
    assert url_problem("https://8.8.8.8/x", ()) is None
    assert url_problem("http://127.0.0.1:8080/hook", LOCAL) is None  # allowed network: http too
    assert url_problem("http://10.0.0.1/hook", LOCAL) is not None
    assert not address_allowed("127.0.0.1", ()) and address_allowed("127.0.0.1", LOCAL)
    assert not address_allowed("::ffff:10.0.0.1", ()) and address_allowed("1.1.1.1", ())
    assert parse_networks("10.0.0.0/8, ::1") == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))


def test_signature_is_hmac_sha256_of_t_dot_body_and_the_backoff_doubles_with_jitter() -> None:
    assert sign("whsec_x", 1700000000, b'{"a":1}') == hmac.new(b"whsec_x", b'1700000000.{"a":1}',
                                                               "sha256").hexdigest()
    assert verify("whsec_x", f"t=1700000000,v1={sign('whsec_x', 1700000000, b'{}')}", b"{}")
    assert not verify("whsec_y", f"t=1700000000,v1={sign('whsec_x', 1700000000, b'{}')}", b"{}")
    policy = RetryPolicy(max_attempts=5, base_seconds=10, max_delay_seconds=35, jitter=0.2, max_age_seconds=1000)
    for attempts, nominal in ((1, 10), (2, 20), (3, 35), (4, 35)):
        assert 0.8 * nominal <= policy.next_delay(attempts) <= 1.2 * nominal
    assert policy.gives_up(5, 0, 1) and not policy.gives_up(4, 0, 1) and policy.gives_up(1, 999, 10)


async def test_the_resolver_keeps_only_allowed_addresses() -> None:
    with pytest.raises(AddressRefused):
        await CheckedResolver(()).resolve("localhost", 80)
    found = await CheckedResolver(LOCAL).resolve("localhost", 80)
    assert found and all(r["host"].startswith("127.") for r in found)


class TestWebhooks:
    @pytest.fixture
    async def billing(self, db: Database) -> AsyncIterator[Billing]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        yield Billing(engine, static_prices(), clock=FakeClock(), key_cache_seconds=0)
        await engine.dispose()

    @pytest.fixture
    async def receiver(self) -> AsyncIterator[Receiver]:
        receiver = await start_receiver()
        yield receiver
        await receiver.close()

    def _worker(self, billing: Billing, **retry: float) -> WebhookWorker:
        policy = RetryPolicy(**{"base_seconds": 10.0, "max_attempts": 5, **retry})  # type: ignore[arg-type]
        return WebhookWorker(billing, WebhookSettings(allowed_networks=LOCAL, timeout_seconds=2.0, retry=policy))

    async def _account(self, billing: Billing, receiver: Receiver) -> tuple[str, str]:
        account, _ = await billing.create_account("Acme")
        await billing.add_credits(account.account_id, 10**9, "seed")
        hook, secret = await WebhookAdmin(billing, LOCAL).set_webhook(account.account_id, receiver.url, [])
        assert secret.startswith("whsec_") and hook.secret_version == 1 and hook.revision == 1
        receiver.secret = secret
        return account.account_id, secret

    async def _deliveries(self, billing: Billing, account: str) -> list:  # type: ignore[type-arg]
        return (await WebhookAdmin(billing).list_deliveries(account))[0]

    async def test_a_balance_low_reaches_the_receiver_signed_once_and_the_log_shows_it(
            self, billing: Billing, receiver: Receiver, tmp_path: Path) -> None:
        account, secret = await self._account(billing, receiver)
        admin = WebhookAdmin(billing, LOCAL)
        shown = await admin.get_webhook(account)
        assert (shown.url, shown.events) == (receiver.url, ["budget.threshold_crossed", "balance.low",
                                                            "balance.restored"])
        await AlertAdmin(billing).set_balance_alert(account, 2 * 10**9)  # above the balance: BalanceLow now
        worker = self._worker(billing)
        assert await worker.step() == 1
        assert await worker.step() == 0  # delivered: nothing is due again
        assert receiver.bad_signatures == 0 and len(receiver.accepted) == 1
        body = receiver.accepted[0]
        assert (body["id"], body["type"], body["account_id"]) == (f"balance.low:{account}:1", "balance.low", account)
        assert body["data"]["threshold"] == "2" and body["data"]["balance_nanos"] == 10**9
        assert receiver.headers[0]["Tollgate-Event-Id"] == body["id"]
        [delivery] = await self._deliveries(billing, account)
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
        assert [(a.attempt, a.status_code) for a in delivery.attempt_log] == [(1, 200)]
        # the settings are events; the secret is in none of them
        async with billing.engine.connect() as conn:
            rows = (await conn.execute(select(messaging.outbox.c.event_id, messaging.outbox.c.value,
                                              messaging.outbox.c.headers))).all()
        assert f"webhook.set:{account}:1" in [r.event_id for r in rows]
        assert not any(secret.encode() in r.value or secret in r.headers for r in rows)
        await admin.set_webhook(account, receiver.url, ["balance.restored"])  # a change: revision 2, same secret
        await assert_rebuild_equals_live(billing.engine, tmp_path)

    async def test_one_step_reads_the_log_until_caught_up_not_one_batch_per_poll(
            self, billing: Billing, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(webhook_queue, "_BATCH", 2)  # the account, credits, webhook and alert are > 2 events
        account, _ = await self._account(billing, receiver)
        await AlertAdmin(billing).set_balance_alert(account, 2 * 10**9)
        assert await self._worker(billing).step() == 1
        assert [b["type"] for b in receiver.accepted] == ["balance.low"]

    async def test_a_receiver_that_fails_first_gets_it_later_with_backoff(self, billing: Billing,
                                                                          receiver: Receiver) -> None:
        account, _ = await self._account(billing, receiver)
        receiver.fail_first = 2
        await AlertAdmin(billing).set_balance_alert(account, 2 * 10**9)
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        worker = self._worker(billing)
        assert await worker.step() == 1  # 500
        [d1] = await self._deliveries(billing, account)
        wait1 = d1.next_attempt_at_unix_ms - int(clock() * 1000)
        assert d1.status == "pending" and 8_000 <= wait1 <= 12_000  # 10 s ± 20 %
        assert await worker.step() == 0  # not due yet
        clock.advance((wait1 + 1) / 1000)  # + 1 ms: the worker truncates the float clock to whole ms
        # a restart: a new worker (and Billing) on the same database picks the retry up
        restarted = self._worker(Billing(billing.engine, static_prices(), clock=clock, key_cache_seconds=0))
        assert await restarted.step() == 1  # 500 again
        [d2] = await self._deliveries(billing, account)
        wait2 = d2.next_attempt_at_unix_ms - int(clock() * 1000)
        assert 16_000 <= wait2 <= 24_000  # doubled
        clock.advance((wait2 + 1) / 1000)
        assert await restarted.step() == 1
        [done] = await self._deliveries(billing, account)
        assert done.status == "delivered" and [a.status_code for a in done.attempt_log] == [500, 500, 200]
        assert [a.error for a in done.attempt_log] == ["HTTP 500", "HTTP 500", ""]
        assert len(receiver.accepted) == 1 and receiver.requests == 3

    async def test_a_worker_killed_after_claiming_loses_nothing(self, billing: Billing, receiver: Receiver) -> None:
        account, _ = await self._account(billing, receiver)
        await AlertAdmin(billing).set_balance_alert(account, 2 * 10**9)
        killed = self._worker(billing)
        async with billing._write() as conn:
            await killed.queue.run_pass(conn, billing._now_ms())
        assert len(await killed._claim()) == 1  # ... and then kill -9: no send, no record
        other = self._worker(billing)
        assert await other.step() == 0  # the claim still holds
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        clock.advance(10)  # the claim (2 × timeout + 5 s) runs out
        assert await other.step() == 1
        assert [b["id"] for b in receiver.accepted] == [f"balance.low:{account}:1"]

    async def test_gives_up_after_the_stated_attempts_and_times_out_a_slow_receiver(
            self, billing: Billing, receiver: Receiver) -> None:
        account, _ = await self._account(billing, receiver)
        receiver.delay = 1.0
        await AlertAdmin(billing).set_balance_alert(account, 2 * 10**9)
        worker = WebhookWorker(billing, WebhookSettings(allowed_networks=LOCAL, timeout_seconds=0.2,
                                                        retry=RetryPolicy(max_attempts=2, base_seconds=1.0)))
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        assert await worker.step() == 1
        clock.advance(5)
        assert await worker.step() == 1
        [d] = await self._deliveries(billing, account)
        assert (d.status, d.attempts, d.next_attempt_at_unix_ms) == ("failed", 2, 0)
        assert all(a.status_code == 0 and a.error.startswith("timeout") for a in d.attempt_log)
        clock.advance(3600)
        assert await worker.step() == 0

    async def test_rotate_signs_with_the_new_secret_and_delete_ends_pending_deliveries(
            self, billing: Billing, receiver: Receiver) -> None:
        account, old = await self._account(billing, receiver)
        admin = WebhookAdmin(billing, LOCAL)
        hook, new = await admin.rotate_secret(account)
        assert new != old and hook.secret_version == 2 and hook.revision == 2
        await AlertAdmin(billing).set_balance_alert(account, 2 * 10**9)
        worker = self._worker(billing)
        await worker.step()  # signed with the new secret: the receiver still holding the old one refuses it
        assert receiver.bad_signatures == 1
        receiver.secret = new
        clock = billing.clock
        assert isinstance(clock, FakeClock)
        clock.advance(15)
        await worker.step()
        assert len(receiver.accepted) == 1
        await AlertAdmin(billing).set_balance_alert(account, 0)  # BalanceRestored, queued
        async with billing._write() as conn:
            await worker.queue.run_pass(conn, billing._now_ms())
        await admin.delete_webhook(account)
        with pytest.raises(WebhookNotFound):
            await admin.get_webhook(account)
        with pytest.raises(WebhookNotFound):
            await admin.rotate_secret(account)
        deliveries = await self._deliveries(billing, account)
        assert [(d.event_type, d.status, d.last_error) for d in deliveries] == [
            ("balance.restored", "failed", "webhook deleted"), ("balance.low", "delivered", "")]
        again, secret = await admin.set_webhook(account, receiver.url, ["balance.low"])
        assert secret and again.secret_version == 3 and again.revision == 4

    async def test_bad_settings_are_refused(self, billing: Billing) -> None:
        account, _ = await billing.create_account("Acme")
        strict = WebhookAdmin(billing)  # no allowed networks: the default
        for url in ("http://127.0.0.1:9/hook", "https://10.0.0.1/", "https://169.254.169.254/", "not a url"):
            with pytest.raises(errors.InvalidArgument):
                await strict.set_webhook(account.account_id, url, [])
        with pytest.raises(errors.InvalidArgument):
            await strict.set_webhook(account.account_id, "https://hooks.example.com/x", ["hold.placed"])
        with pytest.raises(errors.AccountNotFound):
            await strict.set_webhook("acct_nobody", "https://hooks.example.com/x", [])
        with pytest.raises(WebhookNotFound):
            await strict.get_webhook(account.account_id)
        hook, secret = await strict.set_webhook(account.account_id, "https://hooks.example.com/x", ["balance.low"])
        assert secret and hook.events == ["balance.low"]
        same, none = await strict.set_webhook(account.account_id, "https://hooks.example.com/x", ["balance.low"])
        assert none == "" and same.revision == 1
        async with billing.engine.connect() as conn:
            assert (await conn.execute(select(webhook_deliveries))).all() == []
