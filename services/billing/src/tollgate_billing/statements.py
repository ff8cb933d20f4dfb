"""Monthly statements: what an account's calendar month (in its time zone) did to its wallet. Pure, no I/O.

A statement is a function of billing's own events: the money events of the account whose ledger transaction is
dated in the month (credits, captures, expiry charges and their reconciliations, promo expiries, refunds, credit
notes), read from billing's log, plus the opening balance (the wallet's postings before the month). Why billing's
events and not metering's usage report: the statement must add up to the wallet, to the nano, and only billing's
ledger does (an expiry charge, an unknown-usage charge, a refund have no row in metering); the capture events carry
the model that served the request and the key's project (``HoldCaptured.model`` / ``.project``, from the rated
usage), so the breakdowns come from the same events. Older captures without them fall back to the hold's model and
the key's project (the caller looks those up).

``events_sha256`` is SHA-256 over one line ``<event id> <sha256 hex of the event's bytes>\\n`` per covered event, in
log order: anyone holding the log can recompute it, and a closed statement (stored, never rebuilt from changed data)
proves which facts it was made of.

closing = opening + paid credits + promotional credits + refunds + credit notes − charges − expired promotional.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import Message
from tollgate.events.v1 import billing_pb2

from .budgets import _zone
from .domain import LedgerKind, wallet_account
from .errors import InvalidPeriod

__all__ = [
    "CoveredEvent",
    "build_statement",
    "event_id_for",
    "events_sha256",
    "parse_period",
    "period_bounds",
    "period_of",
]

_PERIOD = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")
NO_PROJECT = ""


def parse_period(period: str) -> tuple[int, int]:
    match = _PERIOD.match(period or "")
    if match is None or int(match.group(1)) < 1970:
        raise InvalidPeriod(f"period {period!r} must be YYYY-MM")
    return int(match.group(1)), int(match.group(2))


def period_bounds(period: str, time_zone: str) -> tuple[int, int]:
    """[start, end) of the calendar month in unix ms, midnight on the 1st in ``time_zone``."""
    year, month = parse_period(period)
    zone = _zone(time_zone or "UTC")
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def period_of(at_unix_ms: int, time_zone: str) -> str:
    local = datetime.fromtimestamp(at_unix_ms / 1000, UTC).astimezone(_zone(time_zone or "UTC"))
    return f"{local.year:04d}-{local.month:02d}"


def event_id_for(kind: str, transaction_id: str, reference: str) -> str:
    """The id of the billing event that wrote a ledger transaction (repository._EVENT_IDS, from the other side)."""
    if kind in (LedgerKind.CREDIT_PURCHASE, "promo_credit"):
        return f"credits.added:{transaction_id}"
    if kind == LedgerKind.USAGE_CHARGE:
        return f"hold.captured:{reference}"
    if kind == LedgerKind.HOLD_EXPIRY_CHARGE:
        return f"hold.expired:{reference}"
    if kind == LedgerKind.HOLD_REFUND:
        return f"hold.reconciled:{reference}"
    if kind == "promo_expired":
        return f"promo.expired:{reference}"
    if kind == "refund":
        return "charge.refunded:" + transaction_id.removeprefix("charge-refund:")
    if kind == "credit_note":
        return "credit_note.issued:" + transaction_id.removeprefix("credit-note:")
    raise ValueError(f"ledger kind {kind!r} has no billing event")


@dataclass(frozen=True, slots=True)
class CoveredEvent:
    """One event of the month, as stored in billing's log (its bytes are what the hash covers)."""

    event_id: str
    data: bytes
    message: Message


def events_sha256(events: Iterable[CoveredEvent]) -> tuple[str, int]:
    digest = hashlib.sha256()
    count = 0
    for ev in events:
        digest.update(f"{ev.event_id} {hashlib.sha256(ev.data).hexdigest()}\n".encode())
        count += 1
    return digest.hexdigest(), count


@dataclass
class _Totals:
    paid: int = 0
    promotional: int = 0
    refunds: int = 0
    credit_notes: int = 0
    charges: int = 0
    expired: int = 0


def _lines(amounts: Mapping[str, list[int]]) -> list[billing_pb2.StatementLine]:
    return [billing_pb2.StatementLine(name=name, amount_nanos=total, entries=count)
            for name, (total, count) in sorted(amounts.items(), key=lambda item: (-item[1][0], item[0]))]


def _add(amounts: dict[str, list[int]], name: str, nanos: int) -> None:
    line = amounts.setdefault(name, [0, 0])
    line[0] += nanos
    line[1] += 1


def build_statement(
    *,
    account_id: str,
    account_name: str,
    currency: str,
    time_zone: str,
    period: str,
    opening_balance_nanos: int,
    events: Sequence[CoveredEvent],
    hold_models: Mapping[str, str],
    hold_projects: Mapping[str, str],
    closed: bool,
    generated_at_unix_ms: int,
) -> billing_pb2.Statement:
    """The statement of ``events`` (the month's money events in log order). ``hold_models`` / ``hold_projects``:
    request id → the hold's model and its key's project, for events that do not carry them."""
    start, end = period_bounds(period, time_zone)
    wallet = wallet_account(account_id)
    totals = _Totals()
    by_model: dict[str, list[int]] = {}
    by_project: dict[str, list[int]] = {}
    adjustments: list[billing_pb2.StatementAdjustment] = []
    net = 0
    for covered in events:
        ev = covered.message
        txn: billing_pb2.LedgerTransaction = ev.transaction  # type: ignore[attr-defined]
        moved = sum(p.amount_nanos for p in txn.postings if p.ledger_account == wallet)
        net += moved
        if isinstance(ev, billing_pb2.CreditsAdded):
            if ev.credit_kind == "promotional":
                totals.promotional += moved
            else:
                totals.paid += moved
        elif isinstance(ev, billing_pb2.HoldCaptured | billing_pb2.HoldExpired | billing_pb2.HoldReconciled):
            charge = -moved  # a reconciliation's refund is a negative charge on the same request
            totals.charges += charge
            model = getattr(ev, "model", "") or hold_models.get(ev.hold_id, "")
            project = getattr(ev, "project", "") or hold_projects.get(ev.hold_id, NO_PROJECT)
            _add(by_model, model or "(unknown)", charge)
            _add(by_project, project or "(none)", charge)
        elif isinstance(ev, billing_pb2.PromoCreditExpired):
            totals.expired += -moved
        elif isinstance(ev, billing_pb2.ChargeRefunded):
            totals.refunds += moved
            adjustments.append(billing_pb2.StatementAdjustment(
                kind="refund", id=ev.refund_id, reference=ev.request_id, amount_nanos=moved, reason=ev.reason,
                at_unix_ms=txn.created_at_unix_ms))
        elif isinstance(ev, billing_pb2.CreditNoteIssued):
            totals.credit_notes += moved
            adjustments.append(billing_pb2.StatementAdjustment(
                kind="credit_note", id=ev.credit_note_id, reference=ev.period, amount_nanos=moved, reason=ev.reason,
                at_unix_ms=txn.created_at_unix_ms))
    sha, count = events_sha256(events)
    return billing_pb2.Statement(
        account_id=account_id, account_name=account_name, period=period, currency=currency, time_zone=time_zone,
        period_start_unix_ms=start, period_end_unix_ms=end, closed=closed, events_sha256=sha, event_count=count,
        opening_balance_nanos=opening_balance_nanos, paid_credits_nanos=totals.paid,
        promotional_credits_nanos=totals.promotional, refunds_nanos=totals.refunds,
        credit_notes_nanos=totals.credit_notes, charges_nanos=totals.charges,
        expired_promotional_nanos=totals.expired, closing_balance_nanos=opening_balance_nanos + net,
        charges_by_model=_lines(by_model), charges_by_project=_lines(by_project), adjustments=adjustments,
        generated_at_unix_ms=generated_at_unix_ms,
    )


def adds_up(s: billing_pb2.Statement) -> bool:
    """The statement's own identity (every event moves the wallet through exactly one of these lines)."""
    return s.closing_balance_nanos == (s.opening_balance_nanos + s.paid_credits_nanos + s.promotional_credits_nanos
                                       + s.refunds_nanos + s.credit_notes_nanos - s.charges_nanos
                                       - s.expired_promotional_nanos)
