"""Rebuild billing's tables from its event log and reconcile them with the live database.

``python -m tollgate_billing rebuild --kafka BOOTSTRAP --into DB_URL [--compare-with LIVE_DB_URL]`` replays
``tollgate.billing.v1`` from the beginning into a fresh schema with the same projection code the live path uses,
then compares accounts, keys, budgets, wallets, holds, credits and ledger with the live database and prints a
reconciliation report. Exit status: 0 when equal (or nothing to compare), 1 on any difference, 2 on bad usage.

Events not yet published by the live outbox are, by definition, not in the log: the report says how many there are,
so a difference caused by them is easy to tell from a real one (run it again once the relay has caught up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import ConsumerRecord
from sqlalchemy import Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_common.config import ConfigError
from tollgate_common.db import create_engine, session_maker
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import BatchHandler, RecordCheck, RefusedRecord, replay_topics
from tollgate_common.kafka_security import KafkaSecurity
from tollgate_common.log_access import log_access_from_env
from tollgate_common.migrations import open_database

from . import projections
from .config import DEFAULT_SCHEMA
from .errors import InconsistentEvent
from .repository import SERVICE
from .tables import (
    accounts,
    adjustments,
    api_keys,
    budgets,
    credit_grants,
    groups,
    holds,
    ledger_postings,
    ledger_transactions,
    messaging,
    promo_grants,
    statements,
    wallets,
    webhooks,
)

__all__ = [
    "Progress",
    "RebuildResult",
    "Reconciliation",
    "ReplayStats",
    "Replayer",
    "TableDiff",
    "TargetNotEmpty",
    "compare",
    "main",
    "read_log",
    "rebuild",
    "replay_log",
    "replay_outbox",
]

_SOURCE = f"//tollgate/{SERVICE}"
_SHOWN = 20


@dataclass
class ReplayStats:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    #: Events that did not fit the rebuilt state (each is a difference).
    problems: list[str] = field(default_factory=list)
    #: Records skipped because their producer is not verified (forged, foreign-signed, not a CloudEvent): the live
    #: consumer parked the same ones, so they are no difference, but an operator must see them.
    refused: list[RefusedRecord] = field(default_factory=list)


class Replayer:
    """Applies billing envelopes to a fresh database in order, deduping on (source, id), one transaction a batch.

    An event that does not fit (a broken log or a lost event) is recorded as a problem, inside a savepoint, and the
    replay goes on: the report should show every difference, not stop at the first.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = session_maker(engine)
        self.stats = ReplayStats()

    async def apply(self, items: Sequence[tuple[Envelope, str]]) -> None:
        """``items``: (envelope, where it came from — for the report). One transaction, one batch projection;
        if the batch does not fit, it is applied again event by event to name each event that does not."""
        self.stats.read += len(items)
        where = {env.id: place for env, place in items}
        ours = [env for env, _ in items if env.source == _SOURCE and env.type.startswith("tollgate.billing.v1.")]
        async with self.sessions.begin() as session:
            new = await messaging.mark_processed(session, [(env.source, env.id) for env in ours])
            fresh = [env for env, is_new in zip(ours, new, strict=True) if is_new]
            self.stats.duplicates += len(ours) - len(fresh)
            try:
                async with session.begin_nested():
                    await projections.apply_batch(session, [env.message() for env in fresh], strict=False)
                self.stats.applied += len(fresh)
                return
            except _UNFIT:
                pass
            for env in fresh:
                try:
                    async with session.begin_nested():
                        await projections.apply(session, env.message(), strict=False)
                    self.stats.applied += 1
                except _UNFIT as exc:
                    self.stats.problems.append(f"event {env.id} ({where[env.id]}) could not be applied: {_short(exc)}")


_UNFIT = (InconsistentEvent, IntegrityError, ValueError)


#: Told how many events a batch held, after it was applied (progress bars of the ops command).
Progress = Callable[[int], None]


def _no_progress(_: int) -> None:
    return None


async def replay_log(
    bootstrap: str,
    engine: AsyncEngine,
    *,
    from_offset: int | None = None,
    from_time_ms: int | None = None,
    on_progress: Progress = _no_progress,
    security: KafkaSecurity | None = None,
    verify: RecordCheck | None = None,
) -> ReplayStats:
    """Apply every billing event in the topic to ``engine``'s (fresh) tables, with the live projection code.
    ``verify``: the live consumer's producer check; what it refuses is skipped and listed in ``stats.refused``."""
    replayer = Replayer(engine)

    async def on_batch(items: list[tuple[Envelope, ConsumerRecord]]) -> None:
        await replayer.apply([(env, f"partition {rec.partition} offset {rec.offset}") for env, rec in items])
        on_progress(len(items))

    await read_log(bootstrap, on_batch, from_offset=from_offset, from_time_ms=from_time_ms, security=security,
                   verify=verify, on_refused=replayer.stats.refused.append)
    return replayer.stats


async def read_log(
    bootstrap: str, on_batch: BatchHandler, *, from_offset: int | None = None, from_time_ms: int | None = None,
    security: KafkaSecurity | None = None, verify: RecordCheck | None = None,
    on_refused: Callable[[RefusedRecord], None] | None = None,
) -> int:
    """Every event of ``tollgate.billing.v1`` from the beginning (or the given point), in order per partition
    (= per account); records ``verify`` refuses go to ``on_refused`` instead."""
    return await replay_topics(bootstrap, [Topics.BILLING], on_batch, from_offset=from_offset,
                               from_time_ms=from_time_ms, security=security, verify=verify, on_refused=on_refused)


async def replay_outbox(
    source: AsyncEngine, engine: AsyncEngine, *, batch: int = 2000, on_progress: Progress = _no_progress
) -> ReplayStats:
    """Apply the events kept in ``source``'s outbox (billing's durable copy of its log) to ``engine``."""
    replayer = Replayer(engine)
    t = messaging.outbox
    last = 0
    while True:
        async with source.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.c.id, t.c.headers, t.c.value)
                    .where(t.c.topic == Topics.BILLING, t.c.id > last)
                    .order_by(t.c.id)
                    .limit(batch)
                )
            ).all()
        if not rows:
            return replayer.stats
        items = [
            (Envelope.from_kafka([(k, v.encode()) for k, v in json.loads(row.headers)], row.value), f"outbox {row.id}")
            for row in rows
        ]
        await replayer.apply(items)
        on_progress(len(items))
        last = rows[-1].id


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


# --- comparison -------------------------------------------------------------------------------------------------


@dataclass
class TableDiff:
    name: str
    live_rows: int
    rebuilt_rows: int
    missing: list[str] = field(default_factory=list)  # in live, not rebuilt
    extra: list[str] = field(default_factory=list)  # rebuilt, not in live
    changed: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def render(self) -> list[str]:
        status = "OK" if self.equal else "DIFFERENT"
        lines = [f"  {self.name:<20} live {self.live_rows:>8}  rebuilt {self.rebuilt_rows:>8}  {status}"]
        for label, items in (("missing from rebuild", self.missing), ("only in rebuild", self.extra),
                             ("differs", self.changed)):
            for item in items[:_SHOWN]:
                lines.append(f"      {label}: {item}")
            if len(items) > _SHOWN:
                lines.append(f"      … and {len(items) - _SHOWN} more {label}")
        return lines


@dataclass
class Reconciliation:
    tables: list[TableDiff]
    #: Checks on the rebuilt ledger itself (double entry, wallet = postings).
    invariant_problems: list[str] = field(default_factory=list)
    replay: ReplayStats | None = None
    live_unpublished_events: int = 0

    @property
    def equal(self) -> bool:
        return (
            all(t.equal for t in self.tables)
            and not self.invariant_problems
            and not (self.replay and self.replay.problems)
        )

    def render(self) -> str:
        lines = ["billing reconciliation: rebuilt from tollgate.billing.v1 vs live"]
        if self.replay is not None:
            r = self.replay
            lines.append(f"  events read {r.read}, applied {r.applied}, duplicates skipped {r.duplicates}, "
                         f"not applicable {len(r.problems)}, refused (producer not verified) {len(r.refused)}")
            lines += [f"      {p}" for p in r.problems[:_SHOWN]]
            lines += [f"      refused: {x.describe()}" for x in r.refused[:_SHOWN]]
        for table in self.tables:
            lines += table.render()
        lines += [f"  invariant: {p}" for p in self.invariant_problems]
        if self.live_unpublished_events:
            lines.append(f"  note: the live outbox still holds {self.live_unpublished_events} unpublished event(s); "
                         "they cannot be in the rebuild yet")
        lines.append("RESULT: " + ("EQUAL" if self.equal else "DIFFERENT"))
        return "\n".join(lines)


def _row_key(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.primary_key.columns)


async def _snapshot(engine: AsyncEngine, table: Table) -> dict[Any, tuple[Any, ...]]:
    key_cols = _row_key(table)
    value_cols = [c for c in table.columns if c.name not in key_cols]
    async with engine.connect() as conn:
        rows = await conn.execute(select(*[table.c[k] for k in key_cols], *value_cols))
        out: dict[Any, tuple[Any, ...]] = {}
        for row in rows:
            key = tuple(row[: len(key_cols)])
            out[key[0] if len(key) == 1 else key] = tuple(row[len(key_cols):])
    return out


async def _postings(engine: AsyncEngine) -> Counter[tuple[str, str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(ledger_postings.c.transaction_id, ledger_postings.c.ledger_account, ledger_postings.c.amount_nanos)
        )
        return Counter((r[0], r[1], int(r[2])) for r in rows)


def _diff_maps(name: str, live: dict[Any, Any], rebuilt: dict[Any, Any], columns: Sequence[str]) -> TableDiff:
    diff = TableDiff(name, len(live), len(rebuilt))
    for key in sorted(live.keys() - rebuilt.keys(), key=str):
        diff.missing.append(str(key))
    for key in sorted(rebuilt.keys() - live.keys(), key=str):
        diff.extra.append(str(key))
    for key in sorted(live.keys() & rebuilt.keys(), key=str):
        if live[key] != rebuilt[key]:
            fields = [f"{col} live={a!r} rebuilt={b!r}" for col, a, b in zip(columns, live[key], rebuilt[key],
                                                                             strict=True) if a != b]
            diff.changed.append(f"{key}: " + ", ".join(fields))
    return diff


async def _ledger_invariants(engine: AsyncEngine) -> list[str]:
    problems: list[str] = []
    async with engine.connect() as conn:
        unbalanced = (
            await conn.execute(
                select(ledger_postings.c.transaction_id)
                .group_by(ledger_postings.c.transaction_id)
                .having(func.sum(ledger_postings.c.amount_nanos) != 0)
            )
        ).all()
        problems += [f"transaction {r[0]} does not sum to zero" for r in unbalanced[:_SHOWN]]
        wallet_rows = (await conn.execute(select(wallets.c.account_id, wallets.c.balance_nanos))).all()
        sums = dict(
            (
                await conn.execute(
                    select(ledger_postings.c.ledger_account, func.sum(ledger_postings.c.amount_nanos))
                    .where(ledger_postings.c.ledger_account.like("wallet:%"))
                    .group_by(ledger_postings.c.ledger_account)
                )
            ).all()
        )
        for account_id, balance in wallet_rows:
            posted = int(sums.get(f"wallet:{account_id}", 0) or 0)
            if posted != balance:
                problems.append(f"wallet {account_id} balance {balance} != its postings {posted}")
    return problems


_COMPARED: tuple[tuple[str, Table], ...] = (
    ("accounts", accounts),
    ("groups", groups),
    ("api_keys", api_keys),
    ("budgets", budgets),
    ("wallets", wallets),
    ("holds", holds),
    ("credit_grants", credit_grants),
    ("ledger_transactions", ledger_transactions),
    ("promo_grants", promo_grants),
    ("adjustments", adjustments),
    ("statements", statements),
    ("webhooks", webhooks),
)


async def compare(live: AsyncEngine, rebuilt: AsyncEngine) -> Reconciliation:
    """Compare every billing table of two databases, row by row (ledger postings as a multiset)."""
    tables: list[TableDiff] = []
    for name, table in _COMPARED:
        key_cols = _row_key(table)
        columns = [c.name for c in table.columns if c.name not in key_cols]
        tables.append(_diff_maps(name, await _snapshot(live, table), await _snapshot(rebuilt, table), columns))
    live_postings, rebuilt_postings = await _postings(live), await _postings(rebuilt)
    postings = TableDiff("ledger_postings", sum(live_postings.values()), sum(rebuilt_postings.values()))
    for item, count in sorted((live_postings - rebuilt_postings).items()):
        postings.missing.append(f"{item} x{count}")
    for item, count in sorted((rebuilt_postings - live_postings).items()):
        postings.extra.append(f"{item} x{count}")
    tables.append(postings)
    invariants = await _ledger_invariants(rebuilt)
    async with live.connect() as conn:
        t = messaging.outbox
        unpublished = (
            await conn.execute(
                select(func.count()).select_from(t).where(t.c.topic == Topics.BILLING,
                                                          t.c.published_at_unix_ms.is_(None))
            )
        ).scalar_one()
    return Reconciliation(tables=tables, invariant_problems=invariants, live_unpublished_events=int(unpublished))


# --- the command ------------------------------------------------------------------------------------------------


class TargetNotEmpty(Exception):
    """A rebuild goes into a fresh schema only: replaying onto existing rows would double them."""


@dataclass
class RebuildResult:
    replay: ReplayStats
    reconciliation: Reconciliation | None

    @property
    def equal(self) -> bool:
        if self.reconciliation is not None:
            return self.reconciliation.equal
        return not self.replay.problems

    def render(self) -> str:
        if self.reconciliation is not None:
            return self.reconciliation.render()
        r = self.replay
        lines = [f"billing rebuild: events read {r.read}, applied {r.applied}, duplicates skipped {r.duplicates}, "
                 f"not applicable {len(r.problems)}, refused (producer not verified) {len(r.refused)}"]
        lines += [f"  {p}" for p in r.problems[:_SHOWN]]
        lines += [f"  refused: {x.describe()}" for x in r.refused[:_SHOWN]]
        return "\n".join(lines)


async def rebuild(
    bootstrap: str,
    into_url: str,
    *,
    into_schema: str = DEFAULT_SCHEMA,
    compare_with: str | None = None,
    compare_schema: str = DEFAULT_SCHEMA,
    security: KafkaSecurity | None = None,
    verify: RecordCheck | None = None,
) -> RebuildResult:
    """Replay the log into a fresh schema at ``into_url``; with ``compare_with``, reconcile against it.
    ``security`` and ``verify``: the live consumer's Kafka settings and producer check (see :func:`main`)."""
    target = await open_database(into_url, "tollgate_billing", schema=into_schema)
    try:
        async with target.connect() as conn:
            for table in (accounts, messaging.processed_events):
                if (await conn.execute(select(func.count()).select_from(table))).scalar_one():
                    raise TargetNotEmpty(f"{into_url} already holds billing data ({table.name}); "
                                         "rebuild into a fresh database or schema")
        stats = await replay_log(bootstrap, target, security=security, verify=verify)
        reconciliation = None
        if compare_with:
            live = create_engine(compare_with, schema=compare_schema)
            try:
                reconciliation = await compare(live, target)
            finally:
                await live.dispose()
            reconciliation.replay = stats
        return RebuildResult(replay=stats, reconciliation=reconciliation)
    finally:
        await target.dispose()


def add_arguments(parser: argparse.ArgumentParser, default_kafka: str) -> None:
    parser.add_argument("--kafka", default=default_kafka,
                        help=f"Kafka bootstrap servers (default: BILLING_KAFKA_BOOTSTRAP_SERVERS or {default_kafka})")
    parser.add_argument("--into", required=True, help="database URL to rebuild into (a fresh database or schema)")
    parser.add_argument("--into-schema", default=DEFAULT_SCHEMA, help="PostgreSQL schema for --into (default billing)")
    parser.add_argument("--compare-with", default=None, help="the live database URL to reconcile against")
    parser.add_argument("--compare-schema", default=DEFAULT_SCHEMA,
                        help="PostgreSQL schema of --compare-with (default billing)")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary line")


def main(args: argparse.Namespace) -> int:
    """Reads the Kafka security settings and the internal secret as the service does (``BILLING_KAFKA_*``,
    ``TOLLGATE_INTERNAL_SECRET``), so the rebuild connects like the live consumer and refuses what it parks."""
    try:
        access = log_access_from_env("BILLING")
    except ConfigError as exc:
        print("tollgate-billing rebuild: invalid configuration: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    try:
        result = asyncio.run(
            rebuild(args.kafka, args.into, into_schema=args.into_schema, compare_with=args.compare_with,
                    compare_schema=args.compare_schema, security=access.security, verify=access.verifier())
        )
    except TargetNotEmpty as exc:
        print(f"tollgate-billing rebuild: {exc}", file=sys.stderr)
        return 2
    print(result.render())
    if args.json:
        summary = {"equal": result.equal, "applied": result.replay.applied, "problems": len(result.replay.problems),
                   "refused": len(result.replay.refused)}
        if result.reconciliation:
            summary["tables"] = {t.name: t.equal for t in result.reconciliation.tables}  # type: ignore[assignment]
        print(json.dumps(summary))
    return 0 if result.equal else 1
