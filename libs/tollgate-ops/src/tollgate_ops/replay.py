"""``tollgate replay``: rebuild billing's and metering's read models from the log with the services' own code.

It drives :mod:`tollgate_billing.rebuild` (its :class:`Replayer` and :func:`compare`) and
:mod:`tollgate_metering.rebuild` (:func:`rebuild`, :func:`rebuild_from_archive`, :func:`compare_databases`) over
one source — Kafka from the beginning, an offset or a time, or the durable copies (billing's outbox, metering's
hash-chained archive) — and adds the per-account reconciliation of :mod:`tollgate_ops.accounts`.

Producer identity is checked as the live consumers check it (:mod:`tollgate_common.log_access`): a Kafka record
that is unsigned, signed with another secret or from a service not allowed to produce its type is skipped and
listed (``refused``), never applied. The live consumers parked the same records, so they are no difference between
live and rebuilt; the report names each so the operator can look into who wrote them. The durable copies hold only
what the services wrote themselves (billing's outbox) or accepted after this check (metering's archive).

A target must be a rebuild, never a live database: one with consumer offsets or outbox rows (what only a running
service writes) is refused. A target that an earlier replay filled is accepted, and dedupe on (source, id) makes
replaying the same events again a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_billing import rebuild as billing_rebuild
from tollgate_billing.tables import messaging as billing_messaging
from tollgate_common.db import create_engine
from tollgate_common.events import Topics
from tollgate_common.kafka import RefusedRecord
from tollgate_common.kafka_security import KafkaSecurity
from tollgate_common.log_access import LogAccess
from tollgate_common.migrations import migrate
from tollgate_metering.config import load_price_book_file
from tollgate_metering.domain import DEMO_PRICE_BOOK, PriceBook
from tollgate_metering.rebuild import Reconciliation as MeteringReconciliation
from tollgate_metering.rebuild import compare_databases, live_price_books, rebuild, rebuild_from_archive
from tollgate_metering.tables import archive as metering_archive
from tollgate_metering.tables import messaging as metering_messaging

from .accounts import AccountDiff, account_figures, diff_accounts, first_difference
from .progress import Bars
from .targets import BadUsage, Location

__all__ = ["ReplayReport", "ReplaySource", "replay"]


@dataclass(frozen=True)
class ReplaySource:
    bootstrap: str | None = None
    from_offset: int | None = None
    from_time_ms: int | None = None
    #: billing → its outbox, metering → its archive (``--archive``), instead of Kafka.
    archive: dict[str, Location] | None = None
    #: Kafka TLS/SASL and the producer check, as the live consumers have them.
    access: LogAccess = field(default_factory=LogAccess)

    def describe(self) -> str:
        if self.archive:
            return "archive (" + ", ".join(f"{s}: {loc.display()}" for s, loc in self.archive.items()) + ")"
        where = f"Kafka {self.bootstrap}"
        if self.from_time_ms is not None:
            return f"{where} from time {self.from_time_ms} ms"
        if self.from_offset:
            return f"{where} from offset {self.from_offset}"
        return f"{where} from the beginning"


@dataclass
class ReplayReport:
    source: str
    into: dict[str, str]
    billing_events: int = 0
    billing_applied: int = 0
    billing_duplicates: int = 0
    billing_problems: list[str] = field(default_factory=list)
    metering_events: int = 0
    metering_rated: int = 0
    price_book_versions: list[str] = field(default_factory=list)
    compared_with: dict[str, str] | None = None
    billing_reconciliation: billing_rebuild.Reconciliation | None = None
    metering_reconciliation: MeteringReconciliation | None = None
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    account_diffs: list[AccountDiff] = field(default_factory=list)
    #: Kafka records skipped because their producer is not verified (listed, never applied; no difference).
    refused: list[RefusedRecord] = field(default_factory=list)
    #: False when no internal secret was given (development only): producer signatures were not checked.
    producers_verified: bool = True

    @property
    def equal(self) -> bool:
        if self.billing_problems:
            return False
        if self.compared_with is None:
            return True
        return (
            not self.account_diffs
            and (self.billing_reconciliation is None or self.billing_reconciliation.equal)
            and (self.metering_reconciliation is None or self.metering_reconciliation.equal)
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "result": "equal" if self.equal else "different",
            "source": self.source,
            "into": self.into,
            "billing": {"events_read": self.billing_events, "applied": self.billing_applied,
                        "duplicates": self.billing_duplicates, "problems": self.billing_problems},
            "metering": {"events_read": self.metering_events, "rated": self.metering_rated,
                         "price_book_versions": self.price_book_versions},
            "accounts": self.accounts,
            "producers_verified": self.producers_verified,
            "refused": [r.to_json() for r in self.refused],
        }
        if self.compared_with is not None:
            tables: dict[str, bool] = {}
            if self.billing_reconciliation is not None:
                tables |= {f"billing.{t.name}": t.equal for t in self.billing_reconciliation.tables}
            if self.metering_reconciliation is not None:
                tables |= {f"metering.{t.table}": t.equal for t in self.metering_reconciliation.tables}
            out["compared_with"] = self.compared_with
            out["tables_equal"] = tables
            out["differences"] = [
                {"account_id": d.account_id, "fields": {k: {"live": a, "rebuilt": b} for k, (a, b) in d.fields.items()},
                 "first_differing_event": d.first_event}
                for d in self.account_diffs
            ]
        return out

    def render(self) -> str:
        lines = [f"replay from {self.source}", "into " + ", ".join(f"{k}: {v}" for k, v in self.into.items()),
                 f"  billing:  {self.billing_events} events read, {self.billing_applied} applied, "
                 f"{self.billing_duplicates} duplicates skipped, {len(self.billing_problems)} not applicable",
                 f"  metering: {self.metering_events} events read, {self.metering_rated} rated "
                 f"(price books {', '.join(self.price_book_versions) or 'none'})"]
        lines += [f"    {p}" for p in self.billing_problems[:20]]
        if not self.producers_verified:
            lines.append("  producer signatures NOT checked (no TOLLGATE_INTERNAL_SECRET; development only)")
        if self.refused:
            lines.append(f"  {len(self.refused)} record(s) refused, not applied: their producer is not verified "
                         "(the live consumers parked them too)")
            lines += [f"    {r.describe()}" for r in self.refused[:20]]
        if self.compared_with is None:
            lines.append(f"  {len(self.accounts)} account(s) rebuilt; no --compare-with, so nothing reconciled")
            lines.append("RESULT: " + ("OK" if self.equal else "PROBLEMS"))
            return "\n".join(lines)
        if self.billing_reconciliation is not None:
            lines += ["", self.billing_reconciliation.render()]
        if self.metering_reconciliation is not None:
            lines += ["", self.metering_reconciliation.render()]
        lines += ["", f"per-account reconciliation ({len(self.accounts)} accounts): "
                  f"{len(self.account_diffs)} differ"]
        for d in self.account_diffs:
            lines.append(f"  account {d.account_id}:")
            for k, (a, b) in d.fields.items():
                lines.append(f"    {k:<40} live {a!s:>16}  rebuilt {b!s:>16}")
            if d.first_event:
                lines.append(f"    first differing event: {d.first_event['event']} at {d.first_event['at_unix_ms']} ms"
                             f" ({', '.join(k for k in d.first_event if k not in ('event', 'at_unix_ms'))})")
        lines.append("RESULT: " + ("EQUAL" if self.equal else "DIFFERENT"))
        return "\n".join(lines)


async def _is_live(engine: AsyncEngine, messaging: Any) -> bool:
    async with engine.connect() as conn:
        for table in (messaging.consumer_offsets, messaging.outbox):
            if (await conn.execute(select(func.count()).select_from(table))).scalar_one():
                return True
    return False


async def _topic_size(bootstrap: str, topic: str, from_offset: int | None, security: KafkaSecurity) -> int | None:
    """For the progress bar only: the end offsets (Tansu may answer a little short; the bar then ends at 100%)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                **security.client_kwargs())
    try:
        await consumer.start()
        await consumer.topics()
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            return 0
        end = await consumer.end_offsets(parts)
        return sum(max(0, end[tp] - (from_offset or 0)) for tp in parts)
    except Exception:
        return None
    finally:
        await consumer.stop()


async def _count(location: Location, table: Any, where: Any = None) -> int:
    engine = create_engine(location.url, schema=location.schema)
    try:
        async with engine.connect() as conn:
            q = select(func.count()).select_from(table)
            if where is not None:
                q = q.where(where)
            return int((await conn.execute(q)).scalar_one())
    finally:
        await engine.dispose()


def configured_price_book(path: str | None) -> PriceBook:
    path = path or os.environ.get("METERING_PRICE_BOOK_FILE", "").strip() or None
    return load_price_book_file(Path(path)) if path else DEMO_PRICE_BOOK


async def replay(
    source: ReplaySource,
    into: dict[str, Location],
    *,
    compare_with: dict[str, Location] | None = None,
    price_book: str | None = None,
    bars: Bars | None = None,
) -> ReplayReport:
    bars = bars or Bars(enabled=False)
    report = ReplayReport(source=source.describe(), into={s: loc.display() for s, loc in into.items()},
                          producers_verified=bool(source.archive) or source.access.verifies)
    security, verify = source.access.security, source.access.verifier()

    # Price books: the versions live metering recorded (so each event is rated as it was), else the configured one.
    books: list[PriceBook] = []
    versions_from = (compare_with or {}).get("metering") or (source.archive or {}).get("metering")
    if versions_from is not None:
        books = await live_price_books(versions_from.url, versions_from.schema)
    if price_book or not books:
        books.append(configured_price_book(price_book))
    report.price_book_versions = [b.version for b in books]

    # --- billing ---
    target = create_engine(into["billing"].url, schema=into["billing"].schema)
    try:
        await migrate(target, "tollgate_billing", schema=into["billing"].schema)
        if await _is_live(target, billing_messaging):
            raise BadUsage(f"--into {into['billing'].display()} has consumer offsets or outbox rows: that is a live "
                           "billing database; replay into a fresh one")
        if source.archive:
            loc = source.archive["billing"]
            step = bars.task("billing (outbox)", await _count(loc, billing_messaging.outbox,
                                                               billing_messaging.outbox.c.topic == Topics.BILLING))
            outbox = create_engine(loc.url, schema=loc.schema)
            try:
                stats = await billing_rebuild.replay_outbox(outbox, target, on_progress=step)
            finally:
                await outbox.dispose()
        else:
            assert source.bootstrap
            step = bars.task("billing (Kafka)", await _topic_size(source.bootstrap, Topics.BILLING,
                                                                  source.from_offset, security))
            stats = await billing_rebuild.replay_log(source.bootstrap, target, from_offset=source.from_offset,
                                                     from_time_ms=source.from_time_ms, on_progress=step,
                                                     security=security, verify=verify)
            report.refused += stats.refused
        report.billing_events, report.billing_applied = stats.read, stats.applied
        report.billing_duplicates, report.billing_problems = stats.duplicates, list(stats.problems)
    finally:
        await target.dispose()

    # --- metering ---
    mloc = into["metering"]
    probe = create_engine(mloc.url, schema=mloc.schema)
    try:
        await migrate(probe, "tollgate_metering", schema=mloc.schema)
        if await _is_live(probe, metering_messaging):
            raise BadUsage(f"--into {mloc.display()} has consumer offsets or outbox rows: that is a live metering "
                           "database; replay into a fresh one")
    finally:
        await probe.dispose()
    if source.archive:
        aloc = source.archive["metering"]
        step = bars.task("metering (archive)", await _count(aloc, metering_archive))
        result = await rebuild_from_archive(
            aloc.url, mloc.url, books, schema=mloc.schema, archive_schema=aloc.schema, fresh_only=False,
            on_progress=step)
    else:
        assert source.bootstrap
        step = bars.task("metering (Kafka)", await _topic_size(source.bootstrap, Topics.USAGE, source.from_offset,
                                                               security))
        result = await rebuild(
            source.bootstrap, mloc.url, books, schema=mloc.schema, from_offset=source.from_offset,
            from_time_ms=source.from_time_ms, fresh_only=False, on_progress=step, security=security,
            verify=verify)
        report.refused += result.refused
    report.metering_events, report.metering_rated = result.events_read, result.rated

    # --- the figures, and the reconciliation ---
    rebuilt_b = create_engine(into["billing"].url, schema=into["billing"].schema)
    rebuilt_m = create_engine(mloc.url, schema=mloc.schema)
    live_b = live_m = None
    try:
        rebuilt = await account_figures(rebuilt_b, rebuilt_m)
        report.accounts = {acc: f.flat() for acc, f in sorted(rebuilt.items())}
        if compare_with is None:
            return report
        report.compared_with = {s: loc.display() for s, loc in compare_with.items()}
        live_b = create_engine(compare_with["billing"].url, schema=compare_with["billing"].schema)
        live_m = create_engine(compare_with["metering"].url, schema=compare_with["metering"].schema)
        report.billing_reconciliation = await billing_rebuild.compare(live_b, rebuilt_b)
        report.billing_reconciliation.replay = stats
        report.metering_reconciliation = await compare_databases(
            compare_with["metering"].url, mloc.url, live_schema=compare_with["metering"].schema,
            rebuilt_schema=mloc.schema)
        live = await account_figures(live_b, live_m)
        report.account_diffs = diff_accounts(live, rebuilt)
        suspects = [d.account_id for d in report.account_diffs]
        if not suspects and not report.equal:  # rows differ though the totals agree: look everywhere
            suspects = sorted(live.keys() | rebuilt.keys())
        firsts = await first_difference(live_b, rebuilt_b, live_m, rebuilt_m, suspects)
        by_account = {d.account_id: d for d in report.account_diffs}
        for acc, first in firsts.items():
            if acc not in by_account:
                by_account[acc] = AccountDiff(acc, {})
                report.account_diffs.append(by_account[acc])
            by_account[acc].first_event = first
        report.account_diffs.sort(key=lambda d: d.account_id)
        return report
    finally:
        for engine in (rebuilt_b, rebuilt_m, live_b, live_m):
            if engine is not None:
                await engine.dispose()
