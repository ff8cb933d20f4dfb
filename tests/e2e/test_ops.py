"""The ``tollgate`` ops command against the running platform, invoked as an operator does: the installed console
script in a subprocess, reading the real broker and the services' real databases.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from tollgate_dev.platform import Platform

from .tenant import Tenant, operator_env
from .test_request_path import run_completions

pytestmark = pytest.mark.e2e

TOLLGATE = shutil.which("tollgate") or str(Path(__file__).resolve().parents[2] / ".venv/bin/tollgate")


def tollgate(*args: str, timeout: float = 180, platform: Platform | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command; with ``platform``, in its operator environment (the internal secret, so producer
    signatures are checked as the live consumers check them)."""
    if env is None and platform is not None:
        env = operator_env(platform)
    return subprocess.run([TOLLGATE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def live_args(platform: Platform, billing: str | None = None, metering: str | None = None) -> list[str]:
    return ["--compare-with", f"billing={billing or platform.database_url('billing')}",
            "--compare-with", f"metering={metering or platform.database_url('metering')}"]


def replay(platform: Platform, into: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return tollgate("replay", "--kafka", platform.bootstrap, "--into", into, "--json", *extra, platform=platform)


def replay_until_equal(platform: Platform, tmp: Path) -> tuple[str, dict[str, Any]]:
    """The live outbox may still be publishing the last events: a few fresh attempts, as an operator would."""
    for attempt in range(6):
        into = f"sqlite:///{tmp}/rebuild-{attempt}.db"
        result = replay(platform, into, *live_args(platform))
        if result.returncode == 0:
            return into, json.loads(result.stdout)
        time.sleep(1.0)
    raise AssertionError(f"replay never equalled live:\n{result.stdout}\n{result.stderr}")


def copy_sqlite(url: str, to: Path) -> str:
    """A consistent copy of a live SQLite database (the backup API, WAL included)."""
    src = sqlite3.connect(url.removeprefix("sqlite:///"))
    dst = sqlite3.connect(to)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{to}"


def table_digest(path: Path) -> str:
    conn = sqlite3.connect(path)
    h = hashlib.sha256()
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
        for row in sorted(repr(r) for r in conn.execute(f'SELECT * FROM "{name}"')):
            h.update(f"{name}:{row}".encode())
    conn.close()
    return h.hexdigest()


def test_help_explains_every_command_and_the_exit_statuses() -> None:
    result = tollgate("--help")
    assert result.returncode == 0
    for word in ("replay", "exit status", "billing=URL"):
        assert word in result.stdout
    assert tollgate("replay", "--help").returncode == 0
    bad = tollgate("replay", "--from-offset", "-3", "--into", "sqlite:///x.db")
    assert bad.returncode == 2 and "offset" in bad.stderr


def test_replay_reconciles_each_account_with_live_and_a_second_replay_changes_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    balance = tenant.settle()

    into, report = replay_until_equal(platform, tmp_path)
    assert report["result"] == "equal" and report["differences"] == []
    assert all(report["tables_equal"].values()) and "billing.wallets" in report["tables_equal"]
    figures = report["accounts"][tenant.account_id]
    assert figures["balance_nanos"] == balance["balance_nanos"]
    assert figures["held_nanos"] == 0
    assert figures["credits_nanos"] == 10 * 10**9
    assert figures["charges_nanos"] == 10 * 10**9 - balance["balance_nanos"] > 0
    assert figures["usage[gpt-4o-mini].requests"] == 2

    files = [tmp_path / f"{Path(into.removeprefix('sqlite:///')).stem}-{s}.db" for s in ("billing", "metering")]
    before = [table_digest(f) for f in files]
    again = replay(platform, into)  # no --compare-with: just the rebuild, onto the earlier one
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["billing"]["applied"] == 0 and second["billing"]["duplicates"] == second["billing"]["events_read"]
    assert second["metering"]["rated"] == 0
    assert [table_digest(f) for f in files] == before, "replaying the same log again must change nothing"


def test_replay_names_the_account_the_field_and_the_first_differing_event(platform: Platform, tmp_path: Path) -> None:
    tenant = Tenant.create(platform)
    run_completions(tenant)
    tenant.settle()
    replay_until_equal(platform, tmp_path)  # the log has caught up with live

    billing = copy_sqlite(platform.database_url("billing"), tmp_path / "live-billing.db")
    metering = copy_sqlite(platform.database_url("metering"), tmp_path / "live-metering.db")
    with sqlite3.connect(tmp_path / "live-billing.db") as conn:  # someone "fixes" a balance by hand
        conn.execute("UPDATE wallets SET balance_nanos = balance_nanos + 5 WHERE account_id = ?", (tenant.account_id,))
    with sqlite3.connect(tmp_path / "live-metering.db") as conn:  # and edits one rated request
        (first,) = conn.execute("SELECT request_id FROM rated_usage WHERE account_id = ? ORDER BY occurred_at_unix_ms"
                                " LIMIT 1", (tenant.account_id,)).fetchone()
        conn.execute("UPDATE rated_usage SET resale_price_nanos = resale_price_nanos + 1 WHERE request_id = ?",
                     (first,))

    result = replay(platform, f"sqlite:///{tmp_path}/tampered.db", *live_args(platform, billing, metering))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["result"] == "different"
    (diff,) = [d for d in report["differences"] if d["account_id"] == tenant.account_id]
    assert diff["fields"]["balance_nanos"]["live"] == diff["fields"]["balance_nanos"]["rebuilt"] + 5
    assert diff["first_differing_event"]["event"] == first
    assert report["tables_equal"]["billing.wallets"] is False
    assert report["tables_equal"]["metering.rated_usage"] is False

    text = tollgate("replay", "--kafka", platform.bootstrap, "--into", f"sqlite:///{tmp_path}/text.db",
                    *live_args(platform, billing, metering), platform=platform)
    assert text.returncode == 1
    assert f"account {tenant.account_id}:" in text.stdout and f"first differing event: {first}" in text.stdout
    assert "RESULT: DIFFERENT" in text.stdout


def test_replay_refuses_a_live_database_as_its_target(platform: Platform) -> None:
    result = tollgate("replay", "--kafka", platform.bootstrap, "--into", f"billing={platform.database_url('billing')}",
                      "--into", f"metering={platform.database_url('metering')}", platform=platform)
    assert result.returncode == 2
    assert "live" in result.stderr
