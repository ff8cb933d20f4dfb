"""What billing's Authorize costs in CPU: ``Billing.authorize`` called by C concurrent callers in-process (no gRPC),
on a SQLite file and a PostgreSQL schema. Prints per database and concurrency the calls/s and the CPU µs per call
of this process (``time.process_time``: utime + stime of every thread, so aiosqlite's worker thread counts too;
PostgreSQL's own server CPU does not). Every call places a real hold on funded accounts; asserts nothing.
``--budgets`` gives every account a monthly account budget and every key a daily key budget (limits far above
what the run spends), so each hold is decided against, and counted in, two budgets.

    .venv/bin/python -m bench.authorize [--calls 4000] [--concurrency 1,32] [--databases sqlite,postgres] [--budgets]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tollgate_billing.application import Billing
from tollgate_billing.domain import ModelPrice, PriceBook
from tollgate_common.db import create_engine
from tollgate_common.migrations import migrate
from tollgate_dev.testing import local_postgres_url, postgres_schema

ACCOUNTS = 8
MODEL = "gpt-4o-mini"


class _Prices:
    def __init__(self) -> None:
        self.book = PriceBook("bench", "USD", {MODEL: ModelPrice(MODEL, 180, 720, 1000)})

    def current(self) -> PriceBook:
        return self.book


@contextlib.asynccontextmanager
async def _database(kind: str, tmp: Path) -> AsyncIterator[tuple[str, str | None]]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/authorize.db", None
        return
    url = local_postgres_url()
    if url is None:
        raise RuntimeError("PostgreSQL does not answer")
    async with postgres_schema(url) as schema:
        yield url, schema


async def _budgets(billing: Billing, account_id: str, key_id: str) -> None:
    from tollgate.events.v1 import billing_pb2
    from tollgate_billing.budget_admin import BudgetAdmin

    admin = BudgetAdmin(billing)
    await admin.create_budget(account_id, billing_pb2.BUDGET_SCOPE_ACCOUNT, "", billing_pb2.BUDGET_PERIOD_MONTHLY,
                              10**17)
    await admin.create_budget(account_id, billing_pb2.BUDGET_SCOPE_KEY, key_id, billing_pb2.BUDGET_PERIOD_DAILY,
                              10**17)


async def _run(kind: str, calls: int, concurrency: int, tmp: Path, budgets: bool = False) -> tuple[float, float]:
    async with _database(kind, tmp / f"{kind}-{concurrency}") as (url, schema):
        (tmp / f"{kind}-{concurrency}").mkdir(exist_ok=True)
        engine = create_engine(url, schema=schema)
        await migrate(engine, "tollgate_billing", schema=schema)
        try:
            billing = Billing(engine, _Prices(), key_cache_seconds=60.0)
            keys = []
            for i in range(ACCOUNTS):
                account, _ = await billing.create_account(f"bench {i}")
                await billing.add_credits(account.account_id, 10**15, "seed")
                created = await billing.create_api_key(account.account_id, label="bench")
                keys.append(created.api_key)
                if budgets:
                    await _budgets(billing, account.account_id, created.key_id)
            for i, key in enumerate(keys):  # warm the key cache and the statement caches
                await billing.authorize(key, f"warm-{i}", MODEL, 100, 100)
            queue = iter(range(calls))

            async def caller() -> None:
                for n in queue:
                    await billing.authorize(keys[n % ACCOUNTS], f"req-{n}", MODEL, 100, 100)

            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            return calls / wall, cpu / calls * 1e6
        finally:
            await engine.dispose()


async def _main(calls: int, concurrencies: list[int], databases: list[str], budgets: bool = False) -> None:
    print(f"Billing.authorize in-process: {calls} calls per point, {ACCOUNTS} funded accounts, one key each"
          + (", two budgets per key" if budgets else ""))
    print(f"{'':24} {'calls/s':>9} {'CPU µs/call':>12}")
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-authorize-") as tmp:
        for kind in databases:
            for c in concurrencies:
                per_s, cpu_us = await _run(kind, calls, c, Path(tmp), budgets)
                print(f"{kind + f' c={c}':24} {per_s:9,.0f} {cpu_us:12,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--budgets", action="store_true", help="two budgets on every key's chain")
    args = parser.parse_args(argv)
    dbs = [d for d in args.databases.split(",") if d]
    if "postgres" in dbs and local_postgres_url() is None:
        print("PostgreSQL does not answer; SQLite only")
        dbs = [d for d in dbs if d != "postgres"]
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    asyncio.run(_main(args.calls, concurrencies, dbs, args.budgets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
