"""Metering's store through the application: the same test class on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from tollgate.events.v1 import usage_pb2
from tollgate_common.db import session_maker
from tollgate_common.events import Envelope, Topics
from tollgate_metering.application import Metering
from tollgate_metering.domain import DEMO_PRICE_BOOK
from tollgate_metering.errors import InvalidRequest, PriceBookConflict
from tollgate_metering.repository import open_database
from tollgate_metering.tables import aggregates, archive, messaging, rated_usage

NOON = 1_795_176_000_000  # 2026-11-20T12:00:00Z
HOUR = 3_600_000
RATED_AT = NOON + 5_000


class MeteringStoreContract:
    """Every behaviour of the store, whatever the database. Subclasses provide ``database`` → (url, schema)."""

    @pytest.fixture
    async def metering(self, database: tuple[str, str]) -> AsyncIterator[Metering]:
        url, schema = database
        engine = await open_database(url, schema)
        metering = Metering(session_maker(engine), clock=lambda: RATED_AT)
        await metering.load_price_books()
        await metering.register_price_book(DEMO_PRICE_BOOK)
        yield metering
        await engine.dispose()

    async def rows(self, metering: Metering, table: Any, *where: Any) -> list[dict[str, Any]]:
        async with metering.sessions() as s:
            return [dict(r._mapping) for r in await s.execute(select(table).where(*where))]

    # --- price books --------------------------------------------------------------------------------------------
    async def test_a_price_book_version_is_stored_once_and_never_changes_meaning(
        self, metering: Metering, database: tuple[str, str]
    ) -> None:
        assert await metering.register_price_book(DEMO_PRICE_BOOK) is False  # same content: a no-op
        cheaper = dataclasses.replace(DEMO_PRICE_BOOK, markup_bps=1000)
        with pytest.raises(PriceBookConflict, match="demo-embed-2026-12"):
            await metering.register_price_book(cheaper)
        renamed = dataclasses.replace(cheaper, version="demo-2026-12")
        assert await metering.register_price_book(renamed) is True
        # A new process reads the versions back, in load order, with their content intact.
        engine = await open_database(*database)
        again = Metering(session_maker(engine), clock=lambda: RATED_AT)
        await again.load_price_books()
        await engine.dispose()
        assert [b.version for b in again.books] == ["demo-embed-2026-12", "demo-2026-12"]
        assert again.books[0] == DEMO_PRICE_BOOK and again.books[1].markup_bps == 1000
        assert again.current_price_book().version == "demo-2026-12"

    async def test_a_version_recorded_by_another_replica_is_picked_up_on_refresh(
        self, metering: Metering, database: tuple[str, str]
    ) -> None:
        engine = await open_database(*database)
        other = Metering(session_maker(engine), clock=lambda: RATED_AT)
        await other.load_price_books()
        await other.register_price_book(dataclasses.replace(DEMO_PRICE_BOOK, version="from-replica-b"))
        await engine.dispose()
        await metering.refresh_price_books(max_age_seconds=3600)  # still fresh: no query
        assert metering.current_price_book().version == "demo-embed-2026-12"
        await metering.refresh_price_books(max_age_seconds=0)
        assert metering.current_price_book().version == "from-replica-b"

    async def test_usage_is_rated_with_the_version_in_force_when_it_happened(
        self, metering: Metering, make_usage: Any
    ) -> None:
        later = dataclasses.replace(DEMO_PRICE_BOOK, version="v-later", markup_bps=5000,
                                    effective_from_unix_ms=NOON + HOUR)
        await metering.register_price_book(later)
        await metering.replay_usage([make_usage("req_before", at=NOON), make_usage("req_after", at=NOON + 2 * HOUR)])
        rated = {r["request_id"]: r for r in await self.rows(metering, rated_usage)}
        assert (rated["req_before"]["price_book_version"], rated["req_before"]["resale_price_nanos"]) == (
            "demo-embed-2026-12", 540_000)
        assert (rated["req_after"]["price_book_version"], rated["req_after"]["resale_price_nanos"]) == (
            "v-later", 675_000)

    # --- rated usage, outbox ------------------------------------------------------------------------------------
    async def test_a_rated_row_records_every_input_and_both_amounts_and_the_outbox_gets_usage_rated(
        self, metering: Metering, make_usage: Any
    ) -> None:
        env = make_usage("req_1", account="acc_9", key="key_7", model="gpt-4o", prompt=1234, completion=567,
                         cached=1000, reasoning=7, team="search", project="p1", tags={"env": "prod", "a": "b"})
        async with metering.sessions.begin() as s:
            batch = await metering.record_usage(s, [env], publish=True)
        assert [r.record.request_id for r in batch.rated] == ["req_1"]
        [row] = await self.rows(metering, rated_usage)
        cost = 234 * 2500 + 1000 * 1250 + 567 * 10000  # 1,000 prompt tokens read from the cache at half price
        assert row == {
            "request_id": "req_1", "event_source": "//tollgate/ingress", "account_id": "acc_9", "key_id": "key_7",
            "hold_id": "req_1", "model": "gpt-4o", "provider": "openai", "upstream_model": "gpt-4o",
            "upstream_request_id": "up-req_1", "prompt_tokens": 1234, "completion_tokens": 567,
            "total_tokens": 1801, "cached_prompt_tokens": 1000, "reasoning_tokens": 7,
            "outcome": usage_pb2.REQUEST_OUTCOME_SUCCEEDED, "streamed": False, "team": "search", "project": "p1",
            "tags": json.dumps({"a": "b", "env": "prod"}, separators=(",", ":")),
            "occurred_at_unix_ms": NOON, "rated_at_unix_ms": RATED_AT, "currency": "USD", "exchange_rate": "",
            "price_book_version": "demo-embed-2026-12", "markup_bps": 2000, "input_price_nanos": 2500,
            "output_price_nanos": 10000, "upstream_cost_nanos": cost, "resale_price_nanos": cost * 12 // 10,
            "priced": True, "cache_write_tokens": 0, "cached_input_price_nanos": 1250, "cache_write_price_nanos": 2500,
            "reasoning_price_nanos": 10000,
        }
        [out] = await self.rows(metering, messaging.outbox)
        assert (out["topic"], out["key"], out["event_id"]) == (Topics.USAGE_RATED, "acc_9", "req_1")
        headers = [(k, v.encode()) for k, v in json.loads(out["headers"])]
        published = Envelope.from_kafka(headers, out["value"])
        assert (published.source, published.type, published.subject) == (
            "//tollgate/metering", "tollgate.usage.v1.usage.rated", "acc_9")
        msg = published.message()
        assert isinstance(msg, usage_pb2.UsageRated)
        assert (msg.upstream_cost_nanos, msg.resale_price_nanos, msg.price_book_version) == (
            cost, cost * 12 // 10, "demo-embed-2026-12")
        assert (msg.team, msg.project, dict(msg.tags), msg.usage.cached_prompt_tokens) == (
            "search", "p1", {"env": "prod", "a": "b"}, 1000)

    async def test_a_rebuild_style_replay_writes_no_outbox(self, metering: Metering, make_usage: Any) -> None:
        await metering.replay_usage([make_usage("req_1")])
        assert len(await self.rows(metering, rated_usage)) == 1
        assert await self.rows(metering, messaging.outbox) == []

    async def test_a_duplicate_event_is_rated_once(self, metering: Metering, make_usage: Any) -> None:
        env = make_usage("req_1")
        await metering.replay_usage([env, env])
        await metering.replay_usage([env])
        assert len(await self.rows(metering, rated_usage)) == 1
        [agg] = await self.rows(metering, aggregates)
        assert (agg["requests"], agg["resale_price_nanos"]) == (1, 540_000)
        assert len(await self.rows(metering, archive)) == 1

    async def test_the_same_request_under_another_event_id_is_not_rated_twice(
        self, metering: Metering, make_usage: Any
    ) -> None:
        await metering.replay_usage([make_usage("req_1")])
        await metering.replay_usage([make_usage("req_1", event_id="other", prompt=10**6)])
        [row] = await self.rows(metering, rated_usage)
        assert row["prompt_tokens"] == 1000
        assert len(await self.rows(metering, archive)) == 2  # both were received: both are in the audit trail

    # --- aggregates and the summary -----------------------------------------------------------------------------
    async def test_aggregates_and_the_summary_add_up_per_key_and_model(
        self, metering: Metering, make_usage: Any
    ) -> None:
        await metering.replay_usage([
            make_usage("r1", team="t1"),
            make_usage("r2", team="t1", prompt=2000, completion=0),
            make_usage("r3", team="t1", at=NOON + 24 * HOUR),  # next UTC day
            make_usage("r4", key="key_2", model="deepseek-chat", prompt=10**9, completion=10**8),
            make_usage("r5", account="acc_other"),
        ])
        await metering.replay_usage([make_usage("r6", team="t2", project="p")])
        aggs = await self.rows(metering, aggregates, aggregates.c.account_id == "acc_1")
        by_key = {(a["key_id"], a["model"], a["day"], a["team"], a["project"]): a for a in aggs}
        assert set(by_key) == {
            ("key_1", "gpt-4o-mini", "2026-11-20", "t1", ""),
            ("key_1", "gpt-4o-mini", "2026-11-21", "t1", ""),
            ("key_1", "gpt-4o-mini", "2026-11-20", "t2", "p"),
            ("key_2", "deepseek-chat", "2026-11-20", "", ""),
        }
        day1 = by_key[("key_1", "gpt-4o-mini", "2026-11-20", "t1", "")]
        assert (day1["requests"], day1["prompt_tokens"], day1["completion_tokens"]) == (2, 3000, 500)
        assert (day1["upstream_cost_nanos"], day1["resale_price_nanos"]) == (450_000 + 300_000, 540_000 + 360_000)
        big = by_key[("key_2", "deepseek-chat", "2026-11-20", "", "")]
        assert big["upstream_cost_nanos"] == 10**9 * 270 + 10**8 * 1100 == 380_000_000_000
        assert big["resale_price_nanos"] == 456_000_000_000

        summary = await metering.usage_summary("acc_1")
        assert [(r.key_id, r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.resale_price_nanos)
                for r in summary] == [
            ("key_1", "gpt-4o-mini", 4, 5000, 1500, 540_000 * 3 + 360_000),
            ("key_2", "deepseek-chat", 1, 10**9, 10**8, 456_000_000_000),
        ]
        assert await metering.usage_summary("acc_nobody") == []
        with pytest.raises(InvalidRequest):
            await metering.usage_summary("")

    # --- odd events ---------------------------------------------------------------------------------------------
    async def test_a_model_missing_from_the_book_is_rated_at_zero_marked_and_logged_with_ids_only(
        self, metering: Metering, make_usage: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR, logger="tollgate_metering"):
            await metering.replay_usage([make_usage("req_x", model="mystery-1", tags={"customer": "s3cr3t"})])
        [row] = await self.rows(metering, rated_usage)
        assert (row["priced"], row["upstream_cost_nanos"], row["resale_price_nanos"]) == (False, 0, 0)
        assert row["price_book_version"] == "demo-embed-2026-12"
        [record] = [r for r in caplog.records if "price book" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert (record.request_id, record.account_id, record.model) == ("req_x", "acc_1", "mystery-1")  # type: ignore[attr-defined]
        assert "s3cr3t" not in caplog.text

    async def test_unratable_usage_is_archived_but_not_rated(self, metering: Metering, make_usage: Any) -> None:
        await metering.replay_usage([make_usage("req_neg", prompt=-5), make_usage("req_ok")])
        assert [r["request_id"] for r in await self.rows(metering, rated_usage)] == ["req_ok"]
        assert len(await self.rows(metering, archive)) == 2

    # --- usage analytics ----------------------------------------------------------------------------------------
    async def test_the_usage_report_sums_the_groups_asked_in_the_window_page_by_page(
        self, metering: Metering, make_usage: Any
    ) -> None:
        day = 86_400_000
        await metering.replay_usage([
            make_usage("u1", key="k1", model="gpt-4o", prompt=2000, completion=100, cached=1500, team="t1",
                       tags={"feature": "chat", "env": "prod"}),
            make_usage("u2", key="k1", model="gpt-4o-mini", prompt=1000, completion=500, team="t1",
                       tags={"feature": "search"}, at=NOON + day),
            make_usage("u3", key="k2", model="gpt-4o", prompt=10, completion=10, project="p9", at=NOON + 2 * day),
            make_usage("other", account="acc_other", key="k9", model="gpt-4o"),
            make_usage("late", key="k1", model="gpt-4o", at=NOON + 5 * day),  # outside the window
        ])
        window = (NOON - HOUR, NOON + 3 * day)
        [total], token = await metering.usage_report("acc_1", "", *window, [])
        assert token == ""
        gpt4o = 500 * 2500 + 1500 * 1250 + 100 * 10000
        mini = 1000 * 150 + 500 * 600
        small = 10 * 2500 + 10 * 10000
        assert (total.requests, total.prompt_tokens, total.cached_prompt_tokens, total.completion_tokens) == (
            3, 3010, 1500, 610)
        assert total.upstream_cost_nanos == gpt4o + mini + small
        assert total.resale_price_nanos == sum(-(-c * 12_000 // 10_000) for c in (gpt4o, mini, small))
        assert total.margin_nanos == total.resale_price_nanos - total.upstream_cost_nanos > 0

        by_day_model, _ = await metering.usage_report("acc_1", "", *window, ["model", "day"])
        assert [(r.day, r.model, r.requests) for r in by_day_model] == [
            ("2026-11-20", "gpt-4o", 1), ("2026-11-21", "gpt-4o-mini", 1), ("2026-11-22", "gpt-4o", 1)]
        by_tag, _ = await metering.usage_report("acc_1", "", *window, ["tag"])
        assert [(r.tag, r.requests) for r in by_tag] == [("", 1), ("env=prod", 1), ("feature=chat", 1),
                                                         ("feature=search", 1)]
        by_feature, _ = await metering.usage_report("acc_1", "", *window, ["tag:feature", "team"])
        assert [(r.team, r.tag, r.requests) for r in by_feature] == [("", "", 1), ("t1", "chat", 1),
                                                                     ("t1", "search", 1)]
        one_key, _ = await metering.usage_report("acc_1", "k2", *window, ["key", "project"])
        assert [(r.key_id, r.project, r.requests) for r in one_key] == [("k2", "p9", 1)]

        first, token = await metering.usage_report("acc_1", "", *window, ["day"], page_size=2)
        assert len(first) == 2 and token
        second, end = await metering.usage_report("acc_1", "", *window, ["day"], page_size=2, page_token=token)
        assert [r.day for r in first + second] == ["2026-11-20", "2026-11-21", "2026-11-22"] and end == ""

        for bad in ({"group_by": ["colour"]}, {"page_token": "garbage!"}, {"page_size": 10_001}):
            with pytest.raises(InvalidRequest):
                await metering.usage_report("acc_1", "", *window, bad.get("group_by", []),  # type: ignore[arg-type]
                                            page_size=bad.get("page_size", 0),  # type: ignore[arg-type]
                                            page_token=bad.get("page_token", ""))  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            await metering.usage_report("acc_1", "", NOON, NOON, [])

    # --- the archive --------------------------------------------------------------------------------------------
    async def test_the_archive_chain_verifies_and_detects_edits_gaps_and_cut_tails(
        self, metering: Metering, make_usage: Any
    ) -> None:
        await metering.replay_usage([make_usage(f"a{i}", account="acc_a") for i in range(3)]
                                    + [make_usage("b0", account="acc_b")])
        await metering.replay_usage([make_usage(f"a{i}", account="acc_a") for i in range(3, 5)]
                                    + [make_usage("b1", account="acc_b"), make_usage("c0", account="acc_c")])
        chain = await self.rows(metering, archive, archive.c.account_id == "acc_a")
        assert sorted(r["seq"] for r in chain) == [1, 2, 3, 4, 5]
        assert await metering.verify_archive() == []

        async with metering.sessions.begin() as s:  # an "edit": someone lowers the tokens of a stored event
            forged = usage_pb2.UsageRecorded.FromString(
                next(r["data"] for r in chain if r["seq"] == 2))
            forged.usage.prompt_tokens = 1
            await s.execute(update(archive).where(archive.c.account_id == "acc_a", archive.c.seq == 2)
                            .values(data=forged.SerializeToString()))
            await s.execute(delete(archive).where(archive.c.account_id == "acc_b", archive.c.seq == 2))
            await s.execute(delete(archive).where(archive.c.account_id == "acc_c"))
        problems = await metering.verify_archive()
        assert {(p.account_id, p.seq, p.kind) for p in problems} == {
            ("acc_a", 2, "edited"),
            ("acc_b", 2, "truncated"),
            ("acc_c", 1, "truncated"),
        }
        assert [p.kind for p in await metering.verify_archive("acc_a")] == ["edited"]


class TestOnSQLite(MeteringStoreContract):
    @pytest.fixture
    async def database(self, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
        yield f"sqlite:///{tmp_path}/metering.db", "metering"


@pytest.mark.postgres
class TestOnPostgres(MeteringStoreContract):
    @pytest.fixture
    async def database(self, postgres: tuple[str, str]) -> AsyncIterator[tuple[str, str]]:
        yield postgres


async def test_verify_archive_command_exits_1_on_a_broken_chain(tmp_path: Path, make_usage: Any) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    engine = await open_database(url, "metering")
    metering = Metering(session_maker(engine))
    await metering.register_price_book(DEMO_PRICE_BOOK)
    await metering.replay_usage([make_usage(f"r{i}") for i in range(3)])

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tollgate_metering", "verify-archive", "--database-url", url,
                               *extra], capture_output=True, text=True, timeout=60, env=dict(os.environ))

    ok = verify()
    assert ok.returncode == 0 and "archive chain: intact" in ok.stdout
    async with metering.sessions.begin() as s:
        await s.execute(update(archive).where(archive.c.seq == 1).values(event_time="2020-01-01T00:00:00Z"))
    await engine.dispose()
    broken = verify("--account", "acc_1")
    assert broken.returncode == 1
    assert "BROKEN acc_1 seq 1: edited" in broken.stdout
