"""The statement's renderings (tollgate_ingress.statement_format): JSON, CSV and PDF carry the same numbers, the PDF
is a real PDF that holds the totals, a closed statement renders to the same bytes, and hostile text stays inert."""

from __future__ import annotations

import csv
import io

import pypdf
from tollgate.events.v1 import billing_pb2
from tollgate_ingress.statement_format import (
    CSV_COLUMNS,
    SUMMARY_ITEMS,
    display_amount,
    statement_csv,
    statement_json,
    statement_pdf,
)

B = 10**9


def _statement(**overrides: object) -> billing_pb2.Statement:
    s = billing_pb2.Statement(
        account_id="acct_1", account_name="Acme GmbH", period="2026-11", currency="EUR", time_zone="Europe/Berlin",
        period_start_unix_ms=1_793_487_600_000, period_end_unix_ms=1_796_079_600_000, closed=True,
        events_sha256="ab" * 32, event_count=9, opening_balance_nanos=2 * B, paid_credits_nanos=10 * B,
        promotional_credits_nanos=3 * B, refunds_nanos=250_000_000, credit_notes_nanos=1 * B,
        charges_nanos=4_123_456_789, expired_promotional_nanos=500_000_000, generated_at_unix_ms=1_796_079_700_000,
    )
    s.closing_balance_nanos = (s.opening_balance_nanos + s.paid_credits_nanos + s.promotional_credits_nanos
                               + s.refunds_nanos + s.credit_notes_nanos - s.charges_nanos
                               - s.expired_promotional_nanos)
    s.charges_by_model.add(name="gpt-4o-mini", amount_nanos=4_000_000_000, entries=7)
    s.charges_by_model.add(name="claude-3-5-haiku", amount_nanos=123_456_789, entries=1)
    s.charges_by_project.add(name="research", amount_nanos=4_123_456_789, entries=8)
    s.adjustments.add(kind="refund", id="ref-1", reference="req_abc", amount_nanos=250_000_000,
                      reason="upstream error", at_unix_ms=1_794_000_000_000)
    s.adjustments.add(kind="credit_note", id="cn-1", reference="2026-10", amount_nanos=1 * B,
                      reason="outage goodwill", at_unix_ms=1_795_000_000_000)
    for name, value in overrides.items():
        setattr(s, name, value)
    return s


def test_json_has_every_total_twice_and_the_lines() -> None:
    body = statement_json(_statement())
    assert body["object"] == "statement" and body["status"] == "closed" and body["closed"] is True
    assert body["closing_balance_nanos"] == 2 * B + 10 * B + 3 * B + 250_000_000 + B - 4_123_456_789 - 500_000_000
    assert body["closing_balance"] == "11.626543211"
    assert body["charges"] == "4.123456789" and body["charges_nanos"] == 4_123_456_789
    assert [m["model"] for m in body["charges_by_model"]] == ["gpt-4o-mini", "claude-3-5-haiku"]
    assert body["adjustments"][0] == {"kind": "refund", "id": "ref-1", "reference": "req_abc",
                                      "reason": "upstream error", "at": 1_794_000_000, "amount": "0.25",
                                      "amount_nanos": 250_000_000}
    assert (body["period_start"], body["period_end"], body["event_count"]) == (1_793_487_600, 1_796_079_600, 9)
    assert statement_json(_statement(closed=False))["status"] == "draft"


def test_csv_is_one_row_per_line_item_and_agrees_with_json() -> None:
    statement = _statement()
    rows = list(csv.DictReader(io.StringIO(statement_csv(statement))))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = statement_json(statement)
    summary = {r["item"]: int(r["amount_nanos"]) for r in rows if r["section"] == "summary"}
    assert summary == {item: body[f"{item}_nanos"] for item in SUMMARY_ITEMS}
    assert [r["item"] for r in rows if r["section"] == "summary"] == list(SUMMARY_ITEMS)
    by_model = [(r["item"], int(r["entries"]), int(r["amount_nanos"])) for r in rows
                if r["section"] == "charges_by_model"]
    assert by_model == [("gpt-4o-mini", 7, 4_000_000_000), ("claude-3-5-haiku", 1, 123_456_789)]
    refund = next(r for r in rows if r["section"] == "refund")
    assert (refund["item"], refund["reference"], refund["reason"], refund["amount"]) == (
        "ref-1", "req_abc", "upstream error", "0.25")
    assert refund["at"] == "2026-11-06T21:20:00Z"
    assert {(r["account_id"], r["period"], r["currency"], r["status"]) for r in rows} == {
        ("acct_1", "2026-11", "EUR", "closed")}
    assert len(rows) == len(SUMMARY_ITEMS) + 2 + 1 + 2


def test_csv_cells_a_spreadsheet_would_run_are_made_inert() -> None:
    statement = _statement()
    statement.adjustments[0].reason = '=HYPERLINK("http://x","y")'
    statement.adjustments[1].reason = "+1, and a comma"
    rows = list(csv.DictReader(io.StringIO(statement_csv(statement))))
    reasons = [r["reason"] for r in rows if r["section"] in ("refund", "credit_note")]
    assert reasons == ['\'=HYPERLINK("http://x","y")', "'+1, and a comma"]
    # amounts are numbers, never quoted: a negative balance stays a number
    negative = _statement(opening_balance_nanos=-5, closing_balance_nanos=-5)
    opening = next(r for r in csv.DictReader(io.StringIO(statement_csv(negative))) if r["item"] == "opening_balance")
    assert (opening["amount"], opening["amount_nanos"]) == ("-0.000000005", "-5")


def _pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_the_pdf_parses_and_holds_the_totals_and_lines() -> None:
    data = statement_pdf(_statement())
    assert data.startswith(b"%PDF-")
    text = _pdf_text(data)
    for needle in ("Statement 2026-11", "Acme GmbH (acct_1)", "2026-11-01 to 2026-11-30 (Europe/Berlin)",
                   "Status CLOSED", "Opening balance 2.00", "Credits (paid) 10.00", "Credits (promotional) 3.00",
                   "Refunds 0.25", "Credit notes 1.00", "Charges 4.123456789", "Expired promotional credit 0.50",
                   "Closing balance 11.626543211", "gpt-4o-mini 7 4.00", "claude-3-5-haiku 1 0.123456789",
                   "research 8 4.123456789", "req_abc", "outage goodwill", "ab" * 32):
        assert needle in text, needle
    assert "DRAFT" in _pdf_text(statement_pdf(_statement(closed=False)))


def test_a_closed_statement_renders_to_the_same_pdf_bytes() -> None:
    assert statement_pdf(_statement()) == statement_pdf(_statement())


def test_text_outside_latin1_does_not_break_the_pdf() -> None:
    text = _pdf_text(statement_pdf(_statement(account_name="株式会社 Acmé")))
    assert "Acmé (acct_1)" in text


def test_many_lines_flow_onto_more_pages() -> None:
    statement = _statement()
    for i in range(120):
        statement.charges_by_model.add(name=f"model-{i:03d}", amount_nanos=i, entries=1)
    reader = pypdf.PdfReader(io.BytesIO(statement_pdf(statement)))
    assert len(reader.pages) > 1
    assert "model-119" in _pdf_text(statement_pdf(statement))


def test_display_amount_is_exact_with_at_least_cents() -> None:
    assert [display_amount(n) for n in (0, 10 * B, 1_500_000_000, 12_000, -1_500_000_000, 1)] == [
        "0.00", "10.00", "1.50", "0.000012", "-1.50", "0.000000001"]
