"""``tollgate usage providers``: what each provider served us over a period, from the router's attempt events, in
the shape a procurement team checks a provider's invoice against.

Source: Kafka ``tollgate.attempts.v1`` (one ``AttemptRecorded`` per call the router made to a provider, retries
and fallbacks included), read-only, with the live consumers' Kafka settings and producer check (a record not
signed by the router is refused and listed, never counted), deduplicated on the event id (a producer may
publish twice). The window is on each attempt's start (``started_at_unix_ms``), ``--from`` inclusive, ``--to``
exclusive, as a provider's invoice period is.

One line per (provider, deployment, model, upstream model): attempts, succeeded, failed (and by outcome),
attempts with unknown usage (timed out, cancelled or cut: the provider may have billed them, see
``usage_unknown``), the token counts the provider reported — on any attempt, failed ones included, since a
provider bills what it served — and the upstream cost of those tokens under the price book in force at each
attempt's start (metering's recorded versions, so the figure is what metering priced; the book's upstream
per-token prices, cache reads/writes and reasoning at theirs, via metering's ``rate``; never the resale price).
A model the book does not price is counted in ``unpriced_attempts``
and costs 0 there: a line to look at, not a silent zero.

Money is integer nanos of the book's currency; the CSV adds the same amount as a decimal (``upstream_cost``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from aiokafka.structs import ConsumerRecord
from tollgate.events.v1 import attempts_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import RefusedRecord, replay_topics
from tollgate_common.log_access import LogAccess
from tollgate_metering.domain import PriceBook, UsageFacts, effective_book, rate
from tollgate_metering.errors import InvalidUsage

from .progress import Bars

__all__ = ["CSV_COLUMNS", "ProviderLine", "ProviderUsageReport", "provider_usage"]

ATTEMPT_RECORDED = "tollgate.attempts.v1.attempt.recorded"
#: outcome enum → the column it is counted in (failures only; SUCCEEDED is ``succeeded``).
FAILURE_COLUMNS = {
    attempts_pb2.ATTEMPT_OUTCOME_RATE_LIMITED: "rate_limited",
    attempts_pb2.ATTEMPT_OUTCOME_UPSTREAM_ERROR: "upstream_errors",
    attempts_pb2.ATTEMPT_OUTCOME_TIMEOUT: "timeouts",
    attempts_pb2.ATTEMPT_OUTCOME_REJECTED: "rejected",
    attempts_pb2.ATTEMPT_OUTCOME_CANCELLED: "cancelled",
    attempts_pb2.ATTEMPT_OUTCOME_AUTH_ERROR: "auth_errors",
}


@dataclass
class ProviderLine:
    """One provider deployment serving one model over the period."""

    provider: str
    deployment: str
    model: str
    upstream_model: str
    currency: str
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limited: int = 0
    upstream_errors: int = 0
    timeouts: int = 0
    rejected: int = 0
    cancelled: int = 0
    auth_errors: int = 0
    other_failures: int = 0
    usage_unknown: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    upstream_cost_nanos: int = 0
    unpriced_attempts: int = 0
    first_attempt_unix_ms: int = 0
    last_attempt_unix_ms: int = 0

    def add(self, a: attempts_pb2.AttemptRecorded, book: PriceBook) -> None:
        self.attempts += 1
        if a.outcome == attempts_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            self.succeeded += 1
        else:
            self.failed += 1
            column = FAILURE_COLUMNS.get(a.outcome, "other_failures")
            setattr(self, column, getattr(self, column) + 1)
        self.usage_unknown += a.usage_unknown
        self.streamed += a.streamed
        u = a.usage
        self.prompt_tokens += u.prompt_tokens
        self.completion_tokens += u.completion_tokens
        self.total_tokens += u.total_tokens or (u.prompt_tokens + u.completion_tokens)
        self.cached_prompt_tokens += u.cached_prompt_tokens
        self.reasoning_tokens += u.reasoning_tokens
        self.cache_write_tokens += u.cache_write_tokens
        if u.prompt_tokens or u.completion_tokens:
            try:  # metering's own rating: cache reads/writes and reasoning at their prices, upstream side only
                rating = rate(book, a.model, UsageFacts(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens,
                                                        u.reasoning_tokens, u.cache_write_tokens))
            except InvalidUsage:
                rating = None
            if rating is None or not rating.priced:
                self.unpriced_attempts += 1
            else:
                self.upstream_cost_nanos += rating.upstream_cost_nanos
        at = a.started_at_unix_ms
        self.first_attempt_unix_ms = min(self.first_attempt_unix_ms or at, at)
        self.last_attempt_unix_ms = max(self.last_attempt_unix_ms, at)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "upstream_cost": decimal_amount(self.upstream_cost_nanos)}


CSV_COLUMNS = (*ProviderLine.__dataclass_fields__, "upstream_cost")


def decimal_amount(nanos: int) -> str:
    """Nanos as a plain decimal of the currency unit (``1234500000`` → ``1.234500000``): exact, for spreadsheets."""
    return str(Decimal(nanos).scaleb(-9).quantize(Decimal("0.000000001")))


@dataclass
class ProviderUsageReport:
    window: tuple[int, int]
    accounts: list[str] | None
    kafka: str
    price_books: list[str]
    lines: list[ProviderLine] = field(default_factory=list)
    attempts_read: int = 0
    duplicates: int = 0
    refused: list[RefusedRecord] = field(default_factory=list)
    producers_verified: bool = True
    #: How to print it: text, csv or json (``--format``; ``--json`` is json).
    format: str = "text"

    def totals(self) -> dict[str, dict[str, int]]:
        """Per provider and currency: the figures an invoice has in its summary."""
        out: dict[str, dict[str, int]] = {}
        for ln in self.lines:
            t = out.setdefault(f"{ln.provider} ({ln.currency})", {k: 0 for k in (
                "attempts", "succeeded", "failed", "usage_unknown", "prompt_tokens", "completion_tokens",
                "total_tokens", "upstream_cost_nanos")})
            for k in t:
                t[k] += getattr(ln, k)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"from_unix_ms": self.window[0], "to_unix_ms": self.window[1], "accounts": self.accounts or "all",
                "kafka": self.kafka, "price_books": self.price_books, "attempts_read": self.attempts_read,
                "duplicates_skipped": self.duplicates, "producers_verified": self.producers_verified,
                "refused": [r.to_json() for r in self.refused], "lines": [ln.to_json() for ln in self.lines],
                "totals_by_provider": self.totals()}

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for ln in self.lines:
            row = ln.to_json()
            writer.writerow([row[c] for c in CSV_COLUMNS])
        return out.getvalue()

    def render(self) -> str:
        if self.format == "csv":
            return self.to_csv().rstrip("\n")
        out = [f"provider usage from {self.window[0]} to {self.window[1]} ms "
               f"({'accounts ' + ', '.join(self.accounts) if self.accounts else 'every account'}; "
               f"price books {', '.join(self.price_books)})",
               f"{'provider':<12} {'deployment':<22} {'model':<20} {'attempts':>8} {'ok':>7} {'failed':>7} "
               f"{'unknown':>7} {'prompt tok':>11} {'compl. tok':>11} {'upstream cost':>16}"]
        for ln in self.lines:
            out.append(f"{ln.provider[:12]:<12} {ln.deployment[:22]:<22} {ln.model[:20]:<20} {ln.attempts:>8} "
                       f"{ln.succeeded:>7} {ln.failed:>7} {ln.usage_unknown:>7} {ln.prompt_tokens:>11} "
                       f"{ln.completion_tokens:>11} {decimal_amount(ln.upstream_cost_nanos):>12} {ln.currency}"
                       + (f"  ({ln.unpriced_attempts} unpriced)" if ln.unpriced_attempts else ""))
        for name, t in self.totals().items():
            out.append(f"total {name}: {t['attempts']} attempts, {t['succeeded']} ok, {t['failed']} failed, "
                       f"{t['usage_unknown']} with unknown usage, {t['prompt_tokens']} prompt + "
                       f"{t['completion_tokens']} completion tokens, upstream cost "
                       f"{decimal_amount(t['upstream_cost_nanos'])}")
        out.append(f"{self.attempts_read} attempt events read, {self.duplicates} duplicates skipped")
        if not self.producers_verified:
            out.append("producer signatures NOT checked (no TOLLGATE_INTERNAL_SECRET; development only)")
        if self.refused:
            out.append(f"{len(self.refused)} record(s) refused (producer not verified), not counted:")
            out += [f"  {r.describe()}" for r in self.refused[:50]]
        return "\n".join(out)


async def provider_usage(
    kafka: str, books: Sequence[PriceBook], window: tuple[int, int], *, accounts: list[str] | None = None,
    access: LogAccess | None = None, bars: Bars | None = None, format: str = "text",
) -> ProviderUsageReport:
    """Read the attempts topic once and sum it per provider deployment and model."""
    bars = bars or Bars(enabled=False)
    access = access or LogAccess()
    wanted = set(accounts) if accounts else None
    report = ProviderUsageReport(window, sorted(wanted) if wanted else None, kafka, [b.version for b in books],
                                 producers_verified=access.verifies, format=format)
    lines: dict[tuple[str, str, str, str, str], ProviderLine] = {}
    seen: set[tuple[str, str]] = set()
    step = bars.task("reading tollgate.attempts.v1", None)

    async def on_batch(items: Sequence[tuple[Envelope, ConsumerRecord[Any, Any]]]) -> None:
        for env, _ in items:
            if env.type != ATTEMPT_RECORDED:
                continue
            report.attempts_read += 1
            if (env.source, env.id) in seen:
                report.duplicates += 1
                continue
            seen.add((env.source, env.id))
            a = attempts_pb2.AttemptRecorded.FromString(env.data)
            if not window[0] <= a.started_at_unix_ms < window[1] or (wanted and a.account_id not in wanted):
                continue
            book = effective_book(books, a.started_at_unix_ms)
            key = (a.provider, a.deployment, a.model, a.upstream_model, book.currency)
            line = lines.get(key)
            if line is None:
                line = lines[key] = ProviderLine(*key)
            line.add(a, book)
        step(len(items))

    await replay_topics(kafka, [Topics.ATTEMPTS], on_batch, security=access.security, verify=access.verifier(),
                        on_refused=report.refused.append)
    report.lines = [lines[k] for k in sorted(lines)]
    return report
