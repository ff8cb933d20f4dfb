"""A monthly statement (billing's ``tollgate.events.v1.Statement``) as JSON, CSV and PDF: pure functions, no I/O.

Billing builds the statement from its own events and closes it (immutable, with a SHA-256 over the events it
covers); this module only renders it, so the three formats carry the same numbers by construction: each reads the
same fields of the same message, and a closed statement renders to the same bytes every time (the PDF's creation
date is the statement's ``generated_at``, not the time of the request).

CSV (stdlib ``csv``): one row per line item, the header is :data:`CSV_COLUMNS`:

* ``account_id, period, currency, status`` on every row (``closed`` or ``draft``), so a row read alone says what it is;
* ``section``: ``summary`` (``item`` = ``opening_balance``, ``paid_credits``, ``promotional_credits``, ``refunds``,
  ``credit_notes``, ``charges``, ``expired_promotional``, ``closing_balance``), ``charges_by_model`` (``item`` = the
  model), ``charges_by_project`` (``item`` = the project, ``""`` for keys without one), ``refund`` or
  ``credit_note`` (``item`` = its id, ``reference`` = the request refunded or the period a credit note is against,
  ``reason``, ``at``);
* ``entries``: ledger transactions summed into a charge line; ``amount`` (exact decimal text) and ``amount_nanos``.

Amounts are as the statement states them, all ≥ 0 except balances; the statement adds up as
``closing = opening + paid + promotional + refunds + credit notes − charges − expired promotional``. Text cells a
spreadsheet would run as a formula (starting with ``= + - @``, a tab or a carriage return) get a leading ``'``.

PDF (fpdf2, its built-in Helvetica): the same sections as tables. The core fonts are Latin-1; a character outside it
(an account name in another script) is shown as ``?`` in the PDF only: JSON and CSV carry the exact text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fpdf import FPDF
from tollgate.events.v1 import billing_pb2

from .money import amounts, nanos_to_text

__all__ = ["CSV_COLUMNS", "SUMMARY_ITEMS", "display_amount", "statement_csv", "statement_json", "statement_pdf"]

#: The summary's lines, in the order of the statement's arithmetic (field of Statement without ``_nanos``).
SUMMARY_ITEMS = ("opening_balance", "paid_credits", "promotional_credits", "refunds", "credit_notes", "charges",
                 "expired_promotional", "closing_balance")
CSV_COLUMNS = ("account_id", "period", "currency", "status", "section", "item", "reference", "reason", "at",
               "entries", "amount", "amount_nanos")
_SUMMARY_LABELS = {
    "opening_balance": "Opening balance", "paid_credits": "Credits (paid)",
    "promotional_credits": "Credits (promotional)", "refunds": "Refunds", "credit_notes": "Credit notes",
    "charges": "Charges", "expired_promotional": "Expired promotional credit", "closing_balance": "Closing balance",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _nanos(statement: billing_pb2.Statement, item: str) -> int:
    value: int = getattr(statement, f"{item}_nanos")
    return value


def _status(statement: billing_pb2.Statement) -> str:
    return "closed" if statement.closed else "draft"


def _seconds(ms: int) -> int | None:
    return ms // 1000 if ms else None


def statement_json(statement: billing_pb2.Statement) -> dict[str, Any]:
    """The API's JSON: every amount twice, as exact decimal text and as ``*_nanos``; times in unix seconds."""
    out: dict[str, Any] = {
        "object": "statement",
        "account_id": statement.account_id,
        "account_name": statement.account_name,
        "period": statement.period,
        "currency": statement.currency,
        "time_zone": statement.time_zone or "UTC",
        "status": _status(statement),
        "closed": statement.closed,
        "period_start": _seconds(statement.period_start_unix_ms),
        "period_end": _seconds(statement.period_end_unix_ms),
    }
    out.update(amounts(**{item: _nanos(statement, item) for item in SUMMARY_ITEMS}))
    out["charges_by_model"] = [{"model": line.name, "entries": line.entries, **amounts(amount=line.amount_nanos)}
                               for line in statement.charges_by_model]
    out["charges_by_project"] = [{"project": line.name, "entries": line.entries, **amounts(amount=line.amount_nanos)}
                                 for line in statement.charges_by_project]
    out["adjustments"] = [
        {"kind": a.kind, "id": a.id, "reference": a.reference, "reason": a.reason, "at": _seconds(a.at_unix_ms),
         **amounts(amount=a.amount_nanos)}
        for a in statement.adjustments
    ]
    out["events_sha256"] = statement.events_sha256
    out["event_count"] = statement.event_count
    out["generated_at"] = _seconds(statement.generated_at_unix_ms)
    return out


def _cell(text: str) -> str:
    """Text a spreadsheet would evaluate (``=HYPERLINK(…)`` in a reason) is made inert with a leading quote."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z") if ms else ""


def statement_csv(statement: billing_pb2.Statement) -> str:
    """One row per line item (see the module's docstring for the columns)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    head = [_cell(statement.account_id), statement.period, statement.currency, _status(statement)]

    def row(section: str, item: str, nanos: int, *, reference: str = "", reason: str = "", at: int = 0,
            entries: str = "") -> None:
        writer.writerow([*head, section, _cell(item), _cell(reference), _cell(reason), _iso(at), entries,
                         nanos_to_text(nanos), nanos])

    for item in SUMMARY_ITEMS:
        row("summary", item, _nanos(statement, item))
    for line in statement.charges_by_model:
        row("charges_by_model", line.name, line.amount_nanos, entries=str(line.entries))
    for line in statement.charges_by_project:
        row("charges_by_project", line.name, line.amount_nanos, entries=str(line.entries))
    for a in statement.adjustments:
        row(a.kind, a.id, a.amount_nanos, reference=a.reference, reason=a.reason, at=a.at_unix_ms)
    return out.getvalue()


def display_amount(nanos: int) -> str:
    """Exact, with at least two decimals: ``10`` → ``"10.00"``, ``0.000012`` → ``"0.000012"``, ``-1.5`` → ``"-1.50"``.
    The PDF shows amounts this way (a reader expects cents), never rounded."""
    text = nanos_to_text(nanos)
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def _local_date(ms: int, time_zone: str) -> str:
    """The calendar day of ``ms`` in the account's zone (the statement's month is one in that zone)."""
    try:
        zone = ZoneInfo(time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return datetime.fromtimestamp(ms / 1000, tz=zone).strftime("%Y-%m-%d") if ms else ""


class _Page(FPDF):
    """A4 portrait; a footer with the page number, so a printed statement's pages can be told apart."""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(0, 6, f"Page {self.page_no()}/{{nb}}", align="C")


def _table(pdf: FPDF, title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]],
           widths: tuple[float, ...]) -> None:
    pdf.ln(4)
    pdf.set_font("Helvetica", style="B", size=11)
    pdf.cell(0, 7, title, new_x="LMARGIN", new_y="NEXT")
    if not rows:
        pdf.set_font("Helvetica", size=9)
        pdf.cell(0, 6, "None", new_x="LMARGIN", new_y="NEXT")
        return
    pdf.set_font("Helvetica", size=9)
    with pdf.table(col_widths=widths, text_align=("LEFT",) * (len(widths) - 1) + ("RIGHT",),
                   first_row_as_headings=True, line_height=5) as table:
        for values in (header, *rows):
            line = table.row()
            for value in values:
                line.cell(_latin1(value))


def statement_pdf(statement: billing_pb2.Statement) -> bytes:
    """The statement as a PDF document (bytes). Deterministic for a given statement (see the module docstring)."""
    currency = statement.currency
    pdf = _Page(format="A4")
    pdf.set_creation_date(datetime.fromtimestamp(statement.generated_at_unix_ms / 1000, tz=UTC))
    pdf.set_title(_latin1(f"Statement {statement.period} {statement.account_id}"))
    pdf.set_author("Tollgate")
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=16)
    pdf.cell(0, 10, f"Statement {statement.period}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    status = "CLOSED" if statement.closed else "DRAFT (the month is not closed yet; figures may change)"
    for label, value in (
        ("Account", f"{statement.account_name} ({statement.account_id})"),
        # period_end is exclusive (the next month's first instant): the last day shown is the day before it
        ("Period", f"{_local_date(statement.period_start_unix_ms, statement.time_zone)} to "
                   f"{_local_date(statement.period_end_unix_ms - 1, statement.time_zone)} "
                   f"({statement.time_zone or 'UTC'})"),
        ("Currency", currency),
        ("Status", status),
    ):
        pdf.cell(28, 6, label)
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    summary = [(_SUMMARY_LABELS[item], display_amount(_nanos(statement, item))) for item in SUMMARY_ITEMS]
    _table(pdf, "Summary", ("Item", f"Amount ({currency})"), summary, (120, 60))
    _table(pdf, "Charges by model", ("Model", "Entries", f"Amount ({currency})"),
           [(line.name, str(line.entries), display_amount(line.amount_nanos)) for line in statement.charges_by_model],
           (100, 25, 55))
    _table(pdf, "Charges by project", ("Project", "Entries", f"Amount ({currency})"),
           [(line.name or "(no project)", str(line.entries), display_amount(line.amount_nanos))
            for line in statement.charges_by_project], (100, 25, 55))
    _table(pdf, "Refunds and credit notes", ("Kind", "Id", "Reference", "Reason", f"Amount ({currency})"),
           [(a.kind.replace("_", " "), a.id, a.reference, a.reason, display_amount(a.amount_nanos))
            for a in statement.adjustments], (22, 38, 38, 52, 30))
    pdf.ln(6)
    pdf.set_font("Helvetica", size=8)
    pdf.multi_cell(0, 4, _latin1(
        f"Closing = opening + credits + refunds + credit notes - charges - expired promotional credit. "
        f"Covers {statement.event_count} billing events; SHA-256 over them: {statement.events_sha256 or '-'}. "
        f"Generated {_iso(statement.generated_at_unix_ms)}."), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
