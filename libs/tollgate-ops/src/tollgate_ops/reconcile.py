"""``tollgate reconcile``: completeness of the money trail, Stripe-style: every request that happened was rated once
and settled once, every successful upstream call was billed, and the ledger balances.

What it reads (all read-only):

- Kafka ``tollgate.usage.v1`` (UsageRecorded, published by ingress) and ``tollgate.attempts.v1`` (AttemptRecorded,
  published by the router), from the beginning; plus metering's archive of the UsageRecorded it consumed, so a
  usage event is known even after Kafka's retention dropped it;
- metering's ``rated_usage`` (one row per rated request);
- billing's ``holds``, its outbox (``HoldCaptured`` / ``HoldExpired`` events, ids ``hold.captured:<hold>`` …)
  and its ledger (transactions, postings, wallets).

Gaps (exit 1), each listed by id: ``usage_not_rated``, ``rated_without_usage``, ``usage_not_settled`` (its hold
is open or missing), ``settled_more_than_once`` (both captured and expired), ``attempt_without_usage`` (the
provider served it, nobody was billed), ``hold_expired_unreconciled`` (captured in full at its TTL, still
flagged ``needs_reconciliation``: neither a late usage event nor metering's reconciliation from the router's
attempts has corrected it), ``unbalanced_transaction``, ``ledger_not_zero``, ``wallet_balance``
(balance ≠ the wallet's postings), ``wallet_held`` (held ≠ the sum of its open holds). What is younger than
``--grace`` may still be on its way through the pipeline: it is counted as in flight, not as a gap.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, select
from tollgate.events.v1 import attempts_pb2, billing_pb2, usage_pb2
from tollgate_billing.tables import holds, ledger_postings, ledger_transactions, wallets
from tollgate_billing.tables import messaging as billing_messaging
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import RefusedRecord, replay_topics
from tollgate_common.log_access import LogAccess
from tollgate_metering.tables import archive, rated_usage

from .progress import Bars
from .targets import Location, read_only_engine

__all__ = ["Gap", "ReconcileReport", "reconcile"]

USAGE_RECORDED = "tollgate.usage.v1.usage.recorded"
#: Metering's usage event for a request whose UsageRecorded never came (built from the router's attempts).
USAGE_RECONCILED = "tollgate.usage.v1.usage.reconciled"
ATTEMPT_RECORDED = "tollgate.attempts.v1.attempt.recorded"
SETTLING = {"tollgate.billing.v1.hold.captured": "captured", "tollgate.billing.v1.hold.expired": "expired"}


@dataclass(frozen=True)
class Gap:
    kind: str
    id: str
    account_id: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "account_id": self.account_id, "detail": self.detail}


@dataclass
class _Usage:
    account_id: str
    hold_id: str
    at_ms: int


@dataclass
class ReconcileReport:
    accounts: list[str] | None
    kafka: str | None
    usage_events: int = 0
    rated: int = 0
    settled: int = 0
    successful_attempts: int = 0
    transactions: int = 0
    in_flight: list[Gap] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    #: Kafka records skipped because their producer is not verified: a forged attempt or usage event is neither
    #: evidence of a gap nor proof that there is none. Listed, not counted as gaps.
    refused: list[RefusedRecord] = field(default_factory=list)
    producers_verified: bool = True
    #: ``--provider-usage``: the provider's file against our attempts (its differences are among ``gaps``).
    provider_usage: Any = None

    @property
    def complete(self) -> bool:
        return not self.gaps

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for g in self.gaps:
            out[g.kind] += 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {"result": "complete" if self.complete else "gaps", "accounts": self.accounts or "all",
                "kafka": self.kafka, "usage_events": self.usage_events, "rated": self.rated, "settled": self.settled,
                "successful_attempts": self.successful_attempts, "ledger_transactions": self.transactions,
                "gap_counts": self.counts(), "gaps": [g.to_json() for g in self.gaps],
                "in_flight": [g.to_json() for g in self.in_flight],
                "producers_verified": self.producers_verified, "refused": [r.to_json() for r in self.refused],
                **({"provider_usage": self.provider_usage.to_json()} if self.provider_usage is not None else {})}

    def render(self) -> str:
        lines = [f"reconcile ({'accounts ' + ', '.join(self.accounts) if self.accounts else 'every account'}; "
                 f"Kafka {self.kafka or 'not read'})",
                 f"  {self.usage_events} usage events, {self.rated} rated, {self.settled} holds settled, "
                 f"{self.successful_attempts} successful upstream attempts, {self.transactions} ledger transactions"]
        if self.provider_usage is not None:
            lines.append(f"  {self.provider_usage.summary()}")
        if self.in_flight:
            lines.append(f"  {len(self.in_flight)} still in flight (younger than --grace), not counted as gaps")
        if not self.producers_verified:
            lines.append("  producer signatures NOT checked (no TOLLGATE_INTERNAL_SECRET; development only)")
        if self.refused:
            lines.append(f"  {len(self.refused)} Kafka record(s) refused (producer not verified), not counted:")
            lines += [f"    {r.describe()}" for r in self.refused[:50]]
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
            for g in [g for g in self.gaps if g.kind == kind][:50]:
                lines.append(f"    {g.id}  (account {g.account_id}) {g.detail}")
        lines.append("RESULT: " + ("COMPLETE" if self.complete else f"GAPS ({len(self.gaps)})"))
        return "\n".join(lines)


async def _from_kafka(bootstrap: str, access: LogAccess, accounts: set[str] | None, bars: Bars,
                      refused: list[RefusedRecord]) -> tuple[
        dict[str, _Usage], dict[str, tuple[str, int, str]]]:
    usage: dict[str, _Usage] = {}
    attempts: dict[str, tuple[str, int, str]] = {}  # request id → (account, started at, provider)
    step = bars.task("reading Kafka", None)

    async def on_batch(items: Sequence[tuple[Envelope, ConsumerRecord[Any, Any]]]) -> None:
        for env, _ in items:
            if env.type in (USAGE_RECORDED, USAGE_RECONCILED):
                u = usage_pb2.UsageRecorded.FromString(env.data)
                if accounts is None or u.account_id in accounts:
                    usage[u.request_id] = _Usage(u.account_id, u.hold_id or u.request_id, u.occurred_at_unix_ms)
            elif env.type == ATTEMPT_RECORDED:
                a = attempts_pb2.AttemptRecorded.FromString(env.data)
                ok = a.outcome == attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED
                if ok and (accounts is None or a.account_id in accounts):
                    attempts[a.request_id] = (a.account_id, a.started_at_unix_ms, a.provider)
        step(len(items))

    await replay_topics(bootstrap, [Topics.USAGE, Topics.ATTEMPTS], on_batch, security=access.security,
                        verify=access.verifier(), on_refused=refused.append)
    return usage, attempts


async def reconcile(
    stores: dict[str, Location], *, kafka: str | None, accounts: list[str] | None = None, grace_s: float = 60.0,
    bars: Bars | None = None, access: LogAccess | None = None,
) -> ReconcileReport:
    bars = bars or Bars(enabled=False)
    access = access or LogAccess()
    wanted = set(accounts) if accounts else None
    report = ReconcileReport(sorted(wanted) if wanted else None, kafka,
                             producers_verified=not kafka or access.verifies)
    cutoff = int(time.time() * 1000 - grace_s * 1000)

    usage, attempts = (await _from_kafka(kafka, access, wanted, bars, report.refused)) if kafka else ({}, {})

    def mine(column: Any) -> Any:
        return column.in_(sorted(wanted)) if wanted else column.is_not(None)

    metering = read_only_engine(stores["metering"])
    try:
        async with metering.connect() as conn:
            c = archive.c
            usage_types = (USAGE_RECORDED, USAGE_RECONCILED)
            for data, in await conn.execute(select(c.data).where(c.event_type.in_(usage_types), mine(c.account_id))):
                u = usage_pb2.UsageRecorded.FromString(bytes(data))
                usage.setdefault(u.request_id, _Usage(u.account_id, u.hold_id or u.request_id, u.occurred_at_unix_ms))
            r = rated_usage.c
            rated = {row.request_id: row.account_id for row in await conn.execute(
                select(r.request_id, r.account_id).where(mine(r.account_id)))}
    finally:
        await metering.dispose()

    billing = read_only_engine(stores["billing"])
    try:
        async with billing.connect() as conn:
            h = holds.c
            hold_rows = {row.hold_id: row for row in await conn.execute(
                select(h.hold_id, h.account_id, h.status, h.amount_nanos, h.expires_at_unix_ms)
                .where(mine(h.account_id)))}
            o = billing_messaging.outbox.c
            settlements: dict[str, set[str]] = defaultdict(set)
            for headers, value in await conn.execute(
                    select(o.headers, o.value).where(o.topic == Topics.BILLING, mine(o.key))):
                ce_type = dict(json.loads(headers)).get("ce_type", "")
                if ce_type in SETTLING:
                    msg_cls = billing_pb2.HoldCaptured if SETTLING[ce_type] == "captured" else billing_pb2.HoldExpired
                    settlements[msg_cls.FromString(bytes(value)).hold_id].add(SETTLING[ce_type])
            report.gaps += await _ledger_gaps(conn, wanted, hold_rows, report)
    finally:
        await billing.dispose()

    report.usage_events, report.rated = len(usage), len(rated)
    report.settled = sum(1 for row in hold_rows.values() if row.status != "open")
    report.successful_attempts = len(attempts)

    for request_id, u in sorted(usage.items()):
        young = u.at_ms > cutoff
        if request_id not in rated:
            (report.in_flight if young else report.gaps).append(
                Gap("usage_not_rated", request_id, u.account_id, "no rated_usage row"))
        hold = hold_rows.get(u.hold_id)
        if hold is None or hold.status == "open":
            (report.in_flight if young else report.gaps).append(Gap(
                "usage_not_settled", request_id, u.account_id,
                f"hold {u.hold_id} " + ("does not exist" if hold is None else "is still open")))
    if kafka:  # only with the whole usage topic known can a rated row be called orphaned
        for request_id, account in sorted(rated.items()):
            if request_id not in usage:
                report.gaps.append(Gap("rated_without_usage", request_id, account, "no UsageRecorded"))
    for hold_id, kinds in sorted(settlements.items()):
        if len(kinds) > 1:
            row = hold_rows.get(hold_id)
            report.gaps.append(Gap("settled_more_than_once", hold_id, row.account_id if row else "",
                                   "both " + " and ".join(sorted(kinds))))
    for hold_id, row in sorted(hold_rows.items()):
        if row.status == "expired":  # captured in full at its TTL, flagged, and nothing has reconciled it since
            (report.in_flight if row.expires_at_unix_ms > cutoff else report.gaps).append(Gap(
                "hold_expired_unreconciled", hold_id, row.account_id,
                f"captured in full ({row.amount_nanos} nanos) at its TTL; no usage event or attempts reconciled it"))
    for request_id, (account, started, provider) in sorted(attempts.items()):
        if request_id not in usage:
            (report.in_flight if started > cutoff else report.gaps).append(
                Gap("attempt_without_usage", request_id, account, f"{provider} served it; no UsageRecorded"))
    return report


async def _ledger_gaps(conn: Any, wanted: set[str] | None, hold_rows: dict[str, Any],
                       report: ReconcileReport) -> list[Gap]:
    """Double entry: each transaction nets to zero, so does the ledger; wallets agree with their postings and
    with their open holds (``held_nanos`` is the clearing of money promised to requests in flight)."""
    t, p, w = ledger_transactions.c, ledger_postings.c, wallets.c
    gaps: list[Gap] = []
    scope = t.account_id.in_(sorted(wanted)) if wanted else t.account_id.is_not(None)
    per_tx = (select(t.transaction_id, t.account_id, func.sum(p.amount_nanos).label("net"))
              .join(ledger_postings, p.transaction_id == t.transaction_id).where(scope)
              .group_by(t.transaction_id, t.account_id))
    rows = (await conn.execute(per_tx)).all()
    report.transactions = len(rows)
    for tx, account, net in rows:
        if int(net or 0) != 0:
            gaps.append(Gap("unbalanced_transaction", tx, account, f"postings net to {int(net)} nanos"))
    if wanted is None:
        total = int((await conn.execute(select(func.coalesce(func.sum(p.amount_nanos), 0)))).scalar_one())
        if total != 0:
            gaps.append(Gap("ledger_not_zero", "ledger", "", f"all postings net to {total} nanos"))
    postings = {acc[len("wallet:"):]: int(s or 0) for acc, s in await conn.execute(
        select(p.ledger_account, func.sum(p.amount_nanos)).where(p.ledger_account.like("wallet:%"))
        .group_by(p.ledger_account))}
    open_held: dict[str, int] = defaultdict(int)
    for row in hold_rows.values():
        if row.status == "open":
            open_held[row.account_id] += int(row.amount_nanos)
    wq = select(w.account_id, w.balance_nanos, w.held_nanos)
    if wanted:
        wq = wq.where(w.account_id.in_(sorted(wanted)))
    for account, balance, held in await conn.execute(wq):
        if int(balance) != postings.get(account, 0):
            gaps.append(Gap("wallet_balance", f"wallet:{account}", account,
                            f"balance {int(balance)} ≠ postings {postings.get(account, 0)} nanos"))
        if int(held) != open_held.get(account, 0):
            gaps.append(Gap("wallet_held", f"wallet:{account}", account,
                            f"held {int(held)} ≠ open holds {open_held.get(account, 0)} nanos"))
    return gaps
