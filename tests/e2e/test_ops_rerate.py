"""``tollgate rerate`` against the running platform, and the proof that the what-if and audit commands write
nothing: on SQLite the database files keep every byte; on PostgreSQL they run as a role that may only SELECT.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from tollgate_dev.platform import Platform

from .tenant import Tenant
from .test_ops import copy_sqlite, tollgate
from .test_request_path import run_completions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BOOK = """\
version: whatif-2027
currency: USD
markup_bps: 1000
models:
  gpt-4o-mini: {input_price_nanos: 300, output_price_nanos: 1200, max_output_tokens: 16384}
"""


def rerate(metering: str, book: Path, *extra: str) -> dict[str, Any]:
    result = tollgate("rerate", "--price-book", str(book), "--db", metering, "--json", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def file_bytes(path: Path) -> tuple[str, int]:
    """The database file byte for byte, and the size of its write-ahead log: a write would land in one of them.
    (Opening a WAL database, even read-only, creates an empty -wal and the -shm index beside it.)"""
    wal = path.with_name(path.name + "-wal")
    return hashlib.sha256(path.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0


def test_rerate_gives_what_if_margins_and_writes_nothing(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    tenant.settle()
    book = tmp_path / "book.yaml"
    book.write_text(BOOK)
    billing = tmp_path / "billing.db"
    metering = tmp_path / "metering.db"
    copy_sqlite(platform.database_url("billing"), billing)
    copy_sqlite(platform.database_url("metering"), metering)
    with sqlite3.connect(metering) as conn:
        rows = conn.execute("SELECT prompt_tokens, completion_tokens, upstream_cost_nanos, resale_price_nanos "
                            "FROM rated_usage WHERE account_id = ?", (tenant.account_id,)).fetchall()
    assert len(rows) == 2
    before = (file_bytes(billing), file_bytes(metering))

    report = rerate(f"sqlite:///{metering}", book, "--account", tenant.account_id)
    (line,) = report["lines"]
    assert (line["account_id"], line["model"], line["requests"]) == (tenant.account_id, "gpt-4o-mini", 2)
    assert line["resale_price_nanos"] == sum(r[3] for r in rows)
    assert line["upstream_cost_nanos"] == sum(r[2] for r in rows)
    cost = [p * 300 + c * 1200 for p, c, _, _ in rows]
    assert line["whatif_upstream_cost_nanos"] == sum(cost)
    assert line["whatif_resale_price_nanos"] == sum(-(-x * 11_000 // 10_000) for x in cost)
    assert line["whatif_margin_nanos"] == line["whatif_resale_price_nanos"] - sum(cost)
    assert report["totals"]["requests"] == 2 and report["price_book"] == "whatif-2027"

    # A EUR book needs an exchange rate; with one, prices are converted (rounded up, in integers).
    eur = tmp_path / "eur.yaml"
    eur.write_text(BOOK.replace("USD", "EUR"))
    missing = tollgate("rerate", "--price-book", str(eur), "--db", f"sqlite:///{metering}")
    assert missing.returncode == 2 and "EUR/USD" in missing.stderr
    fx = tmp_path / "fx.yaml"
    fx.write_text('"USD/EUR": "0.5"\n')
    converted = rerate(f"sqlite:///{metering}", eur, "--fx", str(fx), "--account", tenant.account_id)
    assert converted["lines"][0]["whatif_upstream_cost_nanos"] == sum(2 * x for x in cost)

    # The other read-only commands, on the same copies.
    assert tollgate("audit", "export", "--account", tenant.account_id, "--out", str(tmp_path / "audit"),
                    "--db", f"billing=sqlite:///{billing}", "--db", f"metering=sqlite:///{metering}").returncode == 0
    assert tollgate("reconcile", "--no-kafka", "--account", tenant.account_id, "--db", f"billing=sqlite:///{billing}",
                    "--db", f"metering=sqlite:///{metering}").returncode == 0
    assert (file_bytes(billing), file_bytes(metering)) == before, "a read-only command changed a database file"

    text = tollgate("rerate", "--price-book", str(book), "--db", f"sqlite:///{metering}", "--account",
                    tenant.account_id)
    assert text.returncode == 0 and "nothing was written" in text.stdout
    bad = tollgate("rerate", "--price-book", str(tmp_path / "none.yaml"), "--db", f"sqlite:///{metering}")
    assert bad.returncode == 2 and "none.yaml" in bad.stderr


async def _select_only_role(url: str) -> str:
    """A login that may read billing's and metering's schemas and nothing more; its URL."""
    import asyncpg

    u = make_url(url)
    name, password = f"ops_ro_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database=u.database)
    try:
        await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        for schema in ("billing", "metering"):
            await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {name}")
            await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {name}")
    finally:
        await conn.close()
    return u.set(username=name, password=password).render_as_string(hide_password=False)


def test_rerate_export_and_reconcile_need_only_select_on_postgresql(pg_platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(pg_platform)
    run_completions(tenant)
    tenant.settle()
    readonly = asyncio.run(_select_only_role(pg_platform.database_url("metering")))
    book = tmp_path / "book.yaml"
    book.write_text(BOOK)
    report = rerate(readonly, book, "--account", tenant.account_id)
    assert report["lines"][0]["requests"] == 2
    stores = ["--db", f"billing={readonly}", "--db", f"metering={readonly}"]
    export = tollgate("audit", "export", "--account", tenant.account_id, "--out", str(tmp_path / "a"), *stores)
    assert export.returncode == 0, export.stderr
    checked = tollgate("reconcile", "--kafka", pg_platform.bootstrap, "--account", tenant.account_id, "--grace",
                       "30", "--json", *stores, platform=pg_platform)
    assert checked.returncode in (0, 1), checked.stderr
    assert json.loads(checked.stdout)["usage_events"] == 2
