"""``python -m bench.audit_export``: ``tollgate audit export`` + ``verify`` of N events (default 1,000,000).

Writes one account's synthetic history straight into fresh SQLite billing and metering databases (built by the
services' own migrations): per request a HoldPlaced and a HoldCaptured in billing's outbox, a UsageRecorded in
metering's hash-chained archive and a rated_usage row, over several keys, models and projects, ~30 days, with
every eighth stream cut short (outcome CLIENT_CANCELLED, fewer tokens). Then it times the export (reading the
stores, chaining, writing JSONL + CSV + manifest, signing) and the offline verification, and prints the figures.
Prints wall and CPU time (the latter holds up on a shared machine); asserts nothing (the target in issue 11 is
export + verify of 1,000,000 events in < 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tollgate.events.v1 import billing_pb2, usage_pb2
from tollgate_common.db import create_engine
from tollgate_common.migrations import migrate
from tollgate_ops.audit import export
from tollgate_ops.audit_files import verify_dir
from tollgate_ops.targets import Location

ACCOUNT = "acct_bench"
MODELS = {"gpt-4o-mini": (150, 600), "gpt-4o": (2500, 10000), "claude-3-5-haiku": (800, 4000)}
KEYS = [f"key_{i}" for i in range(6)]
PROJECTS = ["search", "support", "ingest", ""]
START_MS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(event_id: str, ce_type: str, source: str, at_ms: int) -> str:
    return json.dumps([["ce_specversion", "1.0"], ["ce_id", event_id], ["ce_source", source], ["ce_type", ce_type],
                       ["ce_subject", ACCOUNT], ["ce_time", _iso(at_ms)], ["content-type", "application/protobuf"]])


async def _schemas(billing: Path, metering: Path) -> None:
    for path, package in ((billing, "tollgate_billing"), (metering, "tollgate_metering")):
        engine = create_engine(f"sqlite:///{path}")
        await migrate(engine, package)
        await engine.dispose()


def generate(billing: Path, metering: Path, events: int, seed: int = 7) -> None:
    """``events`` / 4 requests; plain sqlite3 executemany, one transaction per store (setup, not measured)."""
    asyncio.run(_schemas(billing, metering))
    rng = random.Random(seed)
    outbox, archive_rows, rated = [], [], []
    prev = "0" * 64
    span_ms = 30 * 86_400_000
    requests = events // 4
    for n in range(requests):
        at = START_MS + n * span_ms // requests
        model = rng.choice(list(MODELS))
        key, project = rng.choice(KEYS), rng.choice(PROJECTS)
        cut = n % 8 == 7
        prompt, completion = rng.randint(20, 4000), rng.randint(1, 64 if cut else 1500)
        in_price, out_price = MODELS[model]
        cost = prompt * in_price + completion * out_price
        price = -(-cost * 12_000 // 10_000)
        req, hold = f"req_{n:08d}", f"hold_{n:08d}"
        placed = billing_pb2.HoldPlaced(hold_id=hold, account_id=ACCOUNT, key_id=key, amount_nanos=price * 3,
                                        model=model, created_at_unix_ms=at, expires_at_unix_ms=at + 600_000)
        outbox.append(("tollgate.billing.v1", ACCOUNT, f"hold.placed:{hold}",
                       _headers(f"hold.placed:{hold}", "tollgate.billing.v1.hold.placed", "//tollgate/billing", at),
                       placed.SerializeToString(), at))
        usage = usage_pb2.TokenUsage(prompt_tokens=prompt, completion_tokens=completion,
                                     total_tokens=prompt + completion)
        recorded = usage_pb2.UsageRecorded(
            request_id=req, account_id=ACCOUNT, key_id=key, hold_id=hold, model=model, provider="mock",
            upstream_model=model, upstream_request_id=f"up_{n}", usage=usage,
            outcome=usage_pb2.REQUEST_OUTCOME_CLIENT_CANCELLED if cut else usage_pb2.REQUEST_OUTCOME_SUCCEEDED,
            streamed=cut or n % 3 == 0, occurred_at_unix_ms=at + 40, project=project)
        data = recorded.SerializeToString()
        digest = prev  # the archive's own chain is not what is measured: a placeholder link per row
        archive_rows.append((ACCOUNT, n + 1, req, "tollgate.usage.v1.usage.recorded", "//tollgate/ingress", ACCOUNT,
                             _iso(at + 40), data, prev, digest, at + 41))
        rated.append((req, "//tollgate/ingress", ACCOUNT, key, hold, model, "mock", model, f"up_{n}", prompt,
                      completion, prompt + completion, 0, 0, int(recorded.outcome), recorded.streamed, "", project,
                      "{}", at + 40, at + 45, "USD", "", "bench-1", 2000, in_price, out_price, cost, price, True,
                      0, in_price, in_price, out_price))
        captured = billing_pb2.HoldCaptured(hold_id=hold, account_id=ACCOUNT, key_id=key, hold_amount_nanos=price * 3,
                                            captured_nanos=price, released_nanos=price * 2, usage_event_id=req,
                                            captured_at_unix_ms=at + 50)
        outbox.append(("tollgate.billing.v1", ACCOUNT, f"hold.captured:{hold}",
                       _headers(f"hold.captured:{hold}", "tollgate.billing.v1.hold.captured", "//tollgate/billing",
                                at + 50), captured.SerializeToString(), at + 51))
    with sqlite3.connect(billing) as conn:
        conn.executemany("INSERT INTO outbox (topic, key, event_id, headers, value, published_at_unix_ms) "
                         "VALUES (?, ?, ?, ?, ?, ?)", outbox)
    with sqlite3.connect(metering) as conn:
        conn.executemany("INSERT INTO event_archive VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", archive_rows)
        conn.executemany(f"INSERT INTO rated_usage VALUES ({', '.join('?' * 34)})", rated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-audit-bench-") as tmp:
        root = Path(tmp)
        billing, metering = root / "billing.db", root / "metering.db"
        t0 = time.perf_counter()
        generate(billing, metering, args.events)
        print(f"generated {args.events:,} events in {time.perf_counter() - t0:.1f} s (setup, not measured)")
        key_path = root / "ops.pem"
        key_path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        stores = {"billing": Location(f"sqlite:///{billing}", "billing"),
                  "metering": Location(f"sqlite:///{metering}", "metering")}
        out = root / "export"
        t0, c0 = time.perf_counter(), time.process_time()
        report = asyncio.run(export(ACCOUNT, (0, int(time.time() * 1000)), stores, out, sign_key=key_path))
        t_export, c_export = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        checked = verify_dir(out)
        t_verify, c_verify = time.perf_counter() - t0, time.process_time() - c0
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"audit export: {report.events:,} events over {report.days} days in {t_export:.1f} s "
              f"({report.events / t_export:,.0f} events/s; CPU {c_export:.1f} s = "
              f"{c_export / max(1, report.events) * 1e6:.0f} µs/event), {size / 2**20:.0f} MiB written, signed")
        print(f"audit verify: {checked.events_read:,} events in {t_verify:.1f} s "
              f"({checked.events_read / t_verify:,.0f} events/s; CPU {c_verify:.1f} s = "
              f"{c_verify / max(1, checked.events_read) * 1e6:.0f} µs/event), "
              f"{'intact' if checked.intact else 'TAMPERED'}")
        print(f"export + verify: {t_export + t_verify:.1f} s wall, {c_export + c_verify:.1f} s CPU "
              "(target < 30 s for 1,000,000; on a shared machine the CPU figure is the one that holds)")


if __name__ == "__main__":
    main()
