"""``tollgate reconcile --provider-usage``'s file formats and comparison, on files and attempts made here (the
end-to-end test, tests/e2e/test_ops_provider_usage.py, builds the file from the mock provider's own record)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from tollgate_ops.provider_invoice import Attempt, compare, load_provider_usage
from tollgate_ops.targets import BadUsage

T0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def attempt(upstream_id: str, at_ms: int, tokens: tuple[int, int, int], cost: int | None = 1_500_000,
            model: str = "gpt-4o-mini", provider: str = "openai") -> Attempt:
    return Attempt(upstream_id, f"tg_{upstream_id}", "acct_1", provider, model, at_ms, *tokens, cost, "USD")


def kinds(report: object) -> set[tuple[str, str]]:
    return {(d.kind, d.id) for d in report.differences}  # type: ignore[attr-defined]


def test_a_per_request_csv_matches_by_the_providers_request_id(tmp_path: Path) -> None:
    path = tmp_path / "usage.csv"
    path.write_text("Request_ID,timestamp,model,input_tokens,output_tokens,cached_tokens,cost\n"
                    f"up_1,{T0 // 1000},gpt-4o-mini,100,20,0,0.0015\n"
                    f"up_2,2025-12-01T00:00:05Z,gpt-4o-mini,50,7,10,0.0015\n"
                    f"up_3,{T0 + 9000},gpt-4o,1,1,0,0.0015\n"
                    f"up_9,{T0 + 9500},gpt-4o-mini,1,1,,\n", encoding="utf-8")
    rows = load_provider_usage(path)
    assert [r.start_ms for r in rows] == [T0, T0 + 5000, T0 + 9000, T0 + 9500]
    ours = [attempt("up_1", T0 - 300, (100, 20, 0)), attempt("up_2", T0 + 4800, (50, 8, 10), cost=1_499_999),
            attempt("up_3", T0 + 8900, (1, 1, 0)), attempt("up_4", T0 + 9100, (3, 3, 0)),
            attempt("up_5", T0 + 60_000, (3, 3, 0)), attempt("up_6", T0 + 9200, (3, 3, 0), provider="anthropic")]
    report = compare(rows, ours, file=str(path), provider="openai")
    assert report.matched == 3 and report.mode == "request"
    assert kinds(report) == {
        ("provider_tokens_differ", "up_2"),  # 7 out against our 8
        ("provider_model_differs", "up_3"),
        ("provider_only", "up_9"),
        ("tollgate_only", "up_4"),  # in the file's period, on its provider, not in the file
    }  # up_2's cost 0.0015 is ours rounded to the file's 4 decimals; up_5 is after the file; up_6 not openai
    detail = next(d.detail for d in report.differences if d.id == "up_2")
    assert detail == "output tokens: provider 7, tollgate 8"

    exact = path.with_name("exact.csv")
    exact.write_text("request_id,timestamp,cost\nup_1,2025-12-01,0.001500001\n", encoding="utf-8")
    report = compare(load_provider_usage(exact), ours[:1], file="exact.csv")
    assert [(d.kind, d.detail) for d in report.differences] == [
        ("provider_cost_differs", "provider cost 0.001500001, tollgate 0.001500000")]


def test_openai_and_anthropic_bucket_reports_compare_per_bucket_and_model(tmp_path: Path) -> None:
    openai = {"object": "page", "data": [
        {"object": "bucket", "start_time": T0 // 1000, "end_time": T0 // 1000 + 3600, "results": [
            {"object": "organization.usage.completions.result", "input_tokens": 150, "output_tokens": 27,
             "input_cached_tokens": 10, "num_model_requests": 2, "model": "gpt-4o-mini"},
            {"input_tokens": 5, "output_tokens": 5, "num_model_requests": 1, "model": "o1"}]},
        {"start_time": T0 // 1000 + 3600, "end_time": T0 // 1000 + 7200, "results": [
            {"input_tokens": 3, "output_tokens": 3, "num_model_requests": 2, "model": "gpt-4o-mini"}]}]}
    path = tmp_path / "openai.json"
    path.write_text(json.dumps(openai), encoding="utf-8")
    ours = [attempt("a", T0 + 10, (100, 20, 0)), attempt("b", T0 + 20, (50, 7, 10)),
            attempt("c", T0 + 3_600_000, (3, 3, 0)), attempt("d", T0 + 7_100_000, (1, 1, 0), model="gpt-4o")]
    report = compare(load_provider_usage(path), ours, file=str(path))
    assert report.mode == "bucket" and report.matched == 2
    assert kinds(report) == {("provider_only", "2025-12-01T00:00:00Z/o1"),
                             ("provider_requests_differ", "2025-12-01T01:00:00Z/gpt-4o-mini"),
                             ("tollgate_only", "d")}

    anthropic = {"data": [{"starting_at": "2025-12-01T00:00:00Z", "ending_at": "2025-12-02T00:00:00Z", "results": [
        {"uncached_input_tokens": 80, "cache_read_input_tokens": 10, "output_tokens": 27, "model": "claude-x",
         "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 60}}]}]}
    path = tmp_path / "anthropic.json"
    path.write_text(json.dumps(anthropic), encoding="utf-8")
    (row,) = load_provider_usage(path)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (150, 10, 27)
    claude = [attempt("x", T0 + 5, (150, 27, 10), model="claude-x", provider="anthropic")]
    assert compare([row], claude, file="a.json").differences == []
    assert kinds(compare([row], [attempt("x", T0 + 5, (149, 27, 10), model="claude-x")], file="a.json")) == {
        ("provider_tokens_differ", "2025-12-01T00:00:00Z/claude-x")}


def test_a_cost_we_cannot_price_is_a_difference_not_a_zero(tmp_path: Path) -> None:
    path = tmp_path / "u.json"
    path.write_text(json.dumps([{"id": "up_1", "created": T0 // 1000, "cost": {"value": "0.25"}}]), encoding="utf-8")
    (row,) = load_provider_usage(path)
    assert row.cost == Decimal("0.25")
    report = compare([row], [attempt("up_1", T0, (1, 1, 0), cost=None)], file="u.json")
    assert [d.kind for d in report.differences] == ["provider_cost_differs"]
    assert "cannot price" in report.differences[0].detail


@pytest.mark.parametrize(("text", "message"), [
    ("request_id,model\nup_1,gpt\n", "no time"),
    ("timestamp,model,input_tokens\n2025-12-01,gpt,3\n", "needs its end"),
    ("request_id,timestamp,input_tokens\nup_1,2025-12-01,3.5\n", "row 1: input_tokens is not a whole number"),
    ("request_id,timestamp,cost\nup_1,2025-12-01,abc\n", "cost is not a decimal"),
    ("request_id,timestamp\nup_1,yesterday\n", "not a time"),
    ("request_id,timestamp,end_time\nup_1,2025-12-01,\n,2025-12-01,2025-12-02\n", "either per request"),
    ("request_id,timestamp\n", "no rows"),
    ('{"data": 3}', "a \"data\" list"),
    ("[1]", "entry 1 is not an object"),
    ("{not json", "not JSON"),
])
def test_a_file_it_cannot_read_is_bad_usage_naming_the_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BadUsage, match=message):
        load_provider_usage(path)
    with pytest.raises(BadUsage, match="No such file"):
        load_provider_usage(tmp_path / "absent.csv")
