"""``tollgate reconcile --provider-usage FILE``: a provider's own usage export against what the router recorded.

The provider's file is its side of the invoice; the router's ``AttemptRecorded`` events (one per call it made,
retries and fallbacks included, read from ``tollgate.attempts.v1`` with the producer check) are ours. Two kinds
of file are accepted, CSV or JSON:

- **per request** (a row has a request id: the id the provider answered with, which the router keeps as
  ``upstream_request_id``): each row is matched to our attempt with that id and its model, tokens and cost are
  compared;
- **per time bucket** (no ids, as OpenAI's ``/v1/organization/usage/completions`` and Anthropic's
  ``/v1/organizations/usage_report/messages`` answer): each (bucket, model) is compared with the sum of our
  attempts that started in that bucket on that upstream model.

Columns (CSV headers or JSON members, any case; the first name of each list is the one to write):

========== ==============================================================================================
request id ``request_id``, ``id``, ``upstream_request_id``
time       ``timestamp``, ``time``, ``created``, ``created_at``, ``start_time``, ``starting_at``,
           ``bucket_start`` (unix seconds, unix milliseconds or ISO 8601; UTC without a zone)
bucket end ``end_time``, ``ending_at``, ``bucket_end`` (required for a bucket)
model      ``model`` (the provider's name for it: compared with our upstream model)
input      ``input_tokens``, ``prompt_tokens`` (OpenAI's convention: cached reads included), or
           Anthropic's ``uncached_input_tokens`` + ``cache_read_input_tokens`` + ``cache_creation`` (its
           ``ephemeral_*_input_tokens``) / ``cache_creation_input_tokens``
output     ``output_tokens``, ``completion_tokens``
cached     ``input_cached_tokens``, ``cached_tokens``, ``cache_read_input_tokens``, ``cached_prompt_tokens``
requests   ``num_model_requests``, ``requests``, ``num_requests`` (buckets)
cost       ``cost``, ``cost_usd``, ``amount`` (a decimal of the currency unit, or ``{"value": …}``)
========== ==============================================================================================

JSON: a list of rows, or ``{"data": [...]}`` whose entries are rows or buckets (``start_time``/``starting_at``,
``end_time``/``ending_at`` and ``results``: rows without times of their own). A column the file does not have is
not compared.

Differences (gaps of ``tollgate reconcile``, so exit 1), listed by the provider's request id, or by
``<bucket start>/<model>``:

- ``provider_only``: the provider has it, we have no attempt with that id (or nothing in that bucket and model);
- ``tollgate_only``: an attempt of ours with tokens in the compared period that the file does not have;
- ``provider_model_differs``, ``provider_tokens_differ`` (which counts, theirs and ours), ``provider_requests_differ``;
- ``provider_cost_differs``: their cost against ours, the upstream price of our token counts in metering's
  price book in force at the attempt (``tollgate usage providers``' figure), rounded to the decimals the file
  gives (a provider that rounds to cents is compared in cents).

The compared period is ``--from``/``--to`` when given, else the file's: its buckets' span, or its first to its
last request. ``--provider NAME`` compares only our attempts on that provider (a file comes from one provider;
without it every provider's attempts are ours to compare).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord
from tollgate.events.v1 import attempts_pb2
from tollgate_common.events import Envelope, Topics
from tollgate_common.kafka import RefusedRecord, replay_topics
from tollgate_common.log_access import LogAccess
from tollgate_metering.domain import PriceBook, UsageFacts, effective_book, rate
from tollgate_metering.errors import InvalidUsage

from .progress import Bars
from .targets import BadUsage

__all__ = ["Attempt", "ProviderComparison", "ProviderRow", "compare", "load_provider_usage", "read_attempts"]

ATTEMPT_RECORDED = "tollgate.attempts.v1.attempt.recorded"

_ALIASES: dict[str, tuple[str, ...]] = {
    "request_id": ("request_id", "id", "upstream_request_id"),
    "time": ("timestamp", "time", "created", "created_at", "start_time", "starting_at", "bucket_start"),
    "end": ("end_time", "ending_at", "bucket_end"),
    "model": ("model",),
    "input": ("input_tokens", "prompt_tokens"),
    "uncached": ("uncached_input_tokens",),
    "cache_read": ("cache_read_input_tokens",),
    "cache_creation": ("cache_creation", "cache_creation_input_tokens"),
    "output": ("output_tokens", "completion_tokens"),
    "cached": ("input_cached_tokens", "cached_tokens", "cache_read_input_tokens", "cached_prompt_tokens"),
    "requests": ("num_model_requests", "requests", "num_requests"),
    "cost": ("cost", "cost_usd", "amount"),
}


@dataclass(frozen=True)
class ProviderRow:
    """One row of the provider's file (``where``: its place in the file, for messages)."""

    where: str
    request_id: str
    start_ms: int
    end_ms: int | None
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    requests: int | None
    cost: Decimal | None


@dataclass(frozen=True)
class Attempt:
    """What the router recorded of one upstream call, and its upstream cost (None: the book does not price it)."""

    upstream_request_id: str
    request_id: str
    account_id: str
    provider: str
    upstream_model: str
    started_ms: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_nanos: int | None
    currency: str


# --- the provider's file ------------------------------------------------------------------------------------------


def load_provider_usage(path: Path) -> list[ProviderRow]:
    """The file's rows (CSV or JSON, by content); :class:`BadUsage` names the row and column it cannot read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BadUsage(f"--provider-usage {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadUsage(f"--provider-usage {path}: not UTF-8 text") from None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadUsage(f"--provider-usage {path}: not JSON ({exc})") from None
        rows = list(_json_rows(document))
    else:
        reader = csv.DictReader(text.splitlines())
        rows = [(f"row {n}", {(k or "").strip().lower(): v for k, v in raw.items()}, {})
                for n, raw in enumerate(reader, 1)]
    out = [_row(where, fields, bucket) for where, fields, bucket in rows]
    if not out:
        raise BadUsage(f"--provider-usage {path}: no rows")
    if len({bool(r.request_id) for r in out}) > 1:
        raise BadUsage(f"--provider-usage {path}: some rows have a request id and some do not "
                       "(one file is either per request or per time bucket)")
    return out


def _json_rows(document: Any) -> Iterable[tuple[str, dict[str, Any], dict[str, Any]]]:
    entries = document.get("data") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise BadUsage("--provider-usage: JSON must be a list of rows or an object with a \"data\" list")
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise BadUsage(f"--provider-usage: entry {n} is not an object")
        entry = {str(k).lower(): v for k, v in entry.items()}
        results = entry.get("results")
        if isinstance(results, list):  # a bucket: its results are its rows
            bucket = {k: v for k, v in entry.items() if k != "results"}
            for m, result in enumerate(results, 1):
                if not isinstance(result, dict):
                    raise BadUsage(f"--provider-usage: entry {n} result {m} is not an object")
                yield f"entry {n} result {m}", {str(k).lower(): v for k, v in result.items()}, bucket
        else:
            yield f"entry {n}", entry, {}


def _pick(fields: dict[str, Any], name: str) -> Any:
    for alias in _ALIASES[name]:
        value = fields.get(alias)
        if value not in (None, ""):
            return value
    return None


def _row(where: str, fields: dict[str, Any], bucket: dict[str, Any]) -> ProviderRow:
    def need_int(name: str, value: Any) -> int:
        if isinstance(value, bool):
            raise BadUsage(f"--provider-usage {where}: {name} is not a whole number: {value!r}")
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise BadUsage(f"--provider-usage {where}: {name} is not a whole number: {value!r}") from None
        if number != number.to_integral_value() or number < 0:
            raise BadUsage(f"--provider-usage {where}: {name} is not a whole number: {value!r}")
        return int(number)

    def count(name: str) -> int | None:
        value = _pick(fields, name)
        return None if value is None else need_int(_ALIASES[name][0], value)

    start_raw = _pick(fields, "time") or _pick(bucket, "time")
    if start_raw is None:
        raise BadUsage(f"--provider-usage {where}: no time ({', '.join(_ALIASES['time'])})")
    end_raw = _pick(fields, "end") or _pick(bucket, "end")
    request_id = str(_pick(fields, "request_id") or "").strip()
    start = _time_ms(where, start_raw)
    end = _time_ms(where, end_raw) if end_raw is not None else None
    if not request_id and end is None:
        raise BadUsage(f"--provider-usage {where}: a row without a request id is a time bucket and needs its end "
                       f"({', '.join(_ALIASES['end'])})")
    if end is not None and end <= start:
        raise BadUsage(f"--provider-usage {where}: the bucket ends before it starts")

    input_tokens = count("input")
    if input_tokens is None and _pick(fields, "uncached") is not None:  # Anthropic: input excludes the cache
        creation = _pick(fields, "cache_creation")
        if isinstance(creation, dict):
            creation_tokens = sum(need_int("cache_creation", v) for v in creation.values())
        else:
            creation_tokens = 0 if creation is None else need_int("cache_creation_input_tokens", creation)
        input_tokens = need_int("uncached_input_tokens", _pick(fields, "uncached")) + (count("cache_read") or 0) \
            + creation_tokens
    cost_raw = _pick(fields, "cost")
    if isinstance(cost_raw, dict):
        cost_raw = cost_raw.get("value")
    cost = None
    if cost_raw is not None:
        try:
            cost = Decimal(str(cost_raw).strip())
        except InvalidOperation:
            raise BadUsage(f"--provider-usage {where}: cost is not a decimal number: {cost_raw!r}") from None
        if not cost.is_finite():
            raise BadUsage(f"--provider-usage {where}: cost is not a decimal number: {cost_raw!r}")
    return ProviderRow(where, request_id, start, end, str(_pick(fields, "model") or "").strip(), input_tokens,
                       count("output"), count("cached"), count("requests"), cost)


def _time_ms(where: str, value: Any) -> int:
    """Unix seconds or milliseconds (told apart by size: 10¹¹ s is the year 5138) or ISO 8601."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadUsage(f"--provider-usage {where}: not a time: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return int(number if number > 1e11 else number * 1000)


# --- our side ------------------------------------------------------------------------------------------------------


async def read_attempts(kafka: str, books: Sequence[PriceBook], access: LogAccess, bars: Bars,
                        refused: list[RefusedRecord]) -> list[Attempt]:
    """Every attempt in ``tollgate.attempts.v1`` (once each: deduplicated on source and event id), priced."""
    out: list[Attempt] = []
    seen: set[tuple[str, str]] = set()
    step = bars.task("reading tollgate.attempts.v1", None)

    async def on_batch(items: Sequence[tuple[Envelope, ConsumerRecord[Any, Any]]]) -> None:
        for env, _ in items:
            if env.type != ATTEMPT_RECORDED or (env.source, env.id) in seen:
                continue
            seen.add((env.source, env.id))
            a = attempts_pb2.AttemptRecorded.FromString(env.data)
            u = a.usage
            book = effective_book(books, a.started_at_unix_ms)
            cost: int | None = 0
            if u.prompt_tokens or u.completion_tokens:
                try:
                    rating = rate(book, a.model, UsageFacts(u.prompt_tokens, u.completion_tokens,
                                                            u.cached_prompt_tokens, u.reasoning_tokens,
                                                            u.cache_write_tokens))
                    cost = rating.upstream_cost_nanos if rating.priced else None
                except InvalidUsage:
                    cost = None
            out.append(Attempt(a.upstream_request_id, a.request_id, a.account_id, a.provider, a.upstream_model,
                               a.started_at_unix_ms, u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens,
                               cost, book.currency))
        step(len(items))

    await replay_topics(kafka, [Topics.ATTEMPTS], on_batch, security=access.security, verify=access.verifier(),
                        on_refused=refused.append)
    return out


# --- the comparison ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    kind: str
    id: str
    account_id: str
    detail: str


@dataclass
class ProviderComparison:
    file: str
    mode: str  # "request" or "bucket"
    window: tuple[int, int]
    provider: str | None
    rows: int = 0
    matched: int = 0
    attempts_compared: int = 0
    differences: list[Difference] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "mode": self.mode, "from_unix_ms": self.window[0], "to_unix_ms": self.window[1],
                "provider": self.provider or "all", "rows": self.rows, "matched": self.matched,
                "attempts_compared": self.attempts_compared, "differences": len(self.differences)}

    def summary(self) -> str:
        return (f"provider usage file {self.file} ({self.mode} rows): {self.rows} rows, {self.matched} matched, "
                f"{self.attempts_compared} of our attempts in the period, {len(self.differences)} difference(s)")


def _ours_as_decimal(nanos: int, like: Decimal) -> Decimal:
    """Our cost in the precision the provider gives (never finer than nanos)."""
    exponent = like.as_tuple().exponent
    places = Decimal(1).scaleb(max(min(exponent, 0), -9) if isinstance(exponent, int) else -9)
    return Decimal(nanos).scaleb(-9).quantize(places, rounding=ROUND_HALF_EVEN)


def _compare_counts(row: ProviderRow, input_tokens: int, output_tokens: int, cached: int) -> list[str]:
    out = []
    for name, theirs, ours in (("input", row.input_tokens, input_tokens), ("output", row.output_tokens,
                                                                              output_tokens),
                               ("cached", row.cached_tokens, cached)):
        if theirs is not None and theirs != ours:
            out.append(f"{name} tokens: provider {theirs}, tollgate {ours}")
    return out


def _cost_difference(row: ProviderRow, costs: list[int | None]) -> str | None:
    if row.cost is None:
        return None
    if any(c is None for c in costs):
        return f"provider cost {row.cost}; tollgate cannot price it (model not in the price book)"
    ours = _ours_as_decimal(sum(c for c in costs if c is not None), row.cost)
    return None if ours == row.cost else f"provider cost {row.cost}, tollgate {ours}"


def compare(rows: list[ProviderRow], attempts: list[Attempt], *, file: str, window: tuple[int, int] | None = None,
            provider: str | None = None) -> ProviderComparison:
    """Match the provider's rows with our attempts and list every difference (see the module's docstring)."""
    per_request = bool(rows[0].request_id)
    if window is None:
        start = min(r.start_ms for r in rows)
        end = max((r.end_ms if r.end_ms is not None else r.start_ms + 1) for r in rows)
        window = (start, end)
    ours = [a for a in attempts if provider is None or a.provider == provider]
    in_period = [a for a in ours if window[0] <= a.started_ms < window[1] and (a.input_tokens or a.output_tokens)]
    report = ProviderComparison(file, "request" if per_request else "bucket", window, provider, rows=len(rows),
                                attempts_compared=len(in_period))
    diffs = report.differences
    if per_request:
        by_id = {a.upstream_request_id: a for a in ours if a.upstream_request_id}
        matched: set[str] = set()
        for row in rows:
            a = by_id.get(row.request_id)
            if a is None:
                diffs.append(Difference("provider_only", row.request_id, "", f"{row.where}: model {row.model!r}, "
                                        f"{row.input_tokens} in / {row.output_tokens} out; no attempt of ours has "
                                        "this upstream request id"))
                continue
            matched.add(row.request_id)
            if row.model and row.model != a.upstream_model:
                diffs.append(Difference("provider_model_differs", row.request_id, a.account_id,
                                        f"provider {row.model!r}, tollgate {a.upstream_model!r}"))
            tokens = _compare_counts(row, a.input_tokens, a.output_tokens, a.cached_tokens)
            if tokens:
                diffs.append(Difference("provider_tokens_differ", row.request_id, a.account_id, "; ".join(tokens)))
            cost = _cost_difference(row, [a.cost_nanos])
            if cost:
                diffs.append(Difference("provider_cost_differs", row.request_id, a.account_id, cost))
        report.matched = len(matched)
        for a in sorted(in_period, key=lambda a: (a.started_ms, a.upstream_request_id)):
            if a.upstream_request_id not in matched:
                diffs.append(Difference("tollgate_only", a.upstream_request_id or a.request_id, a.account_id,
                                        f"{a.provider} {a.upstream_model}: {a.input_tokens} in / {a.output_tokens} "
                                        f"out (request {a.request_id}); not in the provider's file"))
        return report

    covered: set[str] = set()
    for row in rows:
        end = row.end_ms if row.end_ms is not None else row.start_ms + 1
        mine = [a for a in in_period if row.start_ms <= a.started_ms < end
                and (not row.model or a.upstream_model == row.model)]
        key = f"{_iso(row.start_ms)}/{row.model or '*'}"
        if not mine:
            diffs.append(Difference("provider_only", key, "", f"{row.where}: {row.input_tokens} in / "
                                    f"{row.output_tokens} out; no attempt of ours in that bucket and model"))
            continue
        report.matched += 1
        covered.update(a.upstream_request_id or a.request_id for a in mine)
        tokens = _compare_counts(row, sum(a.input_tokens for a in mine), sum(a.output_tokens for a in mine),
                                 sum(a.cached_tokens for a in mine))
        if tokens:
            diffs.append(Difference("provider_tokens_differ", key, "", "; ".join(tokens)))
        if row.requests is not None and row.requests != len(mine):
            diffs.append(Difference("provider_requests_differ", key, "",
                                    f"provider {row.requests} requests, tollgate {len(mine)} attempts"))
        cost = _cost_difference(row, [a.cost_nanos for a in mine])
        if cost:
            diffs.append(Difference("provider_cost_differs", key, "", cost))
    for a in sorted(in_period, key=lambda a: (a.started_ms, a.upstream_request_id)):
        if (a.upstream_request_id or a.request_id) not in covered:
            diffs.append(Difference("tollgate_only", a.upstream_request_id or a.request_id, a.account_id,
                                    f"{a.provider} {a.upstream_model} at {_iso(a.started_ms)}: {a.input_tokens} in / "
                                    f"{a.output_tokens} out; in no bucket and model of the provider's file"))
    return report


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
