"""``tollgate rerate``: what a period would have earned under another price book (or exchange rates), per account,
model and project, next to what it did earn. A what-if: it reads metering's ``rated_usage`` through a read-only
connection (:func:`tollgate_ops.targets.read_only_engine`) and writes nothing anywhere.

Each rated request keeps its token counts, so it is re-rated with metering's own :func:`tollgate_metering.domain.rate`
under the new book; amounts stay integer nanos. When the new book's currency is not the account's (the rated row's
currency), ``--fx`` gives the rate: a YAML or JSON map ``"USD/EUR": "0.92"`` (1 USD = 0.92 EUR), applied to the
re-rated cost and price and rounded up to the nano, as a decimal, never a float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from tollgate_metering.config import load_price_book_file
from tollgate_metering.domain import PriceBook, UsageFacts, rate
from tollgate_metering.tables import rated_usage

from .progress import Bars
from .targets import BadUsage, Location, read_only_engine

__all__ = ["Line", "RerateReport", "load_fx", "rerate"]


def load_fx(path: Path | None) -> dict[str, Decimal]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BadUsage(f"--fx {path}: not readable YAML/JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise BadUsage(f"--fx {path}: a map of \"FROM/TO\": rate is expected")
    out: dict[str, Decimal] = {}
    for pair, value in data.items():
        try:
            rate_ = Decimal(str(value))
        except InvalidOperation:
            raise BadUsage(f"--fx {path}: {pair}: {value!r} is not a number") from None
        if len(str(pair).split("/")) != 2 or not rate_.is_finite() or rate_ <= 0:
            raise BadUsage(f"--fx {path}: {pair}: give \"FROM/TO\": a positive rate")
        out[str(pair).upper()] = rate_
    return out


@dataclass
class Line:
    """One (account, model, project): what was charged, and what the other book would charge."""

    account_id: str
    model: str
    project: str
    currency: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_cost_nanos: int = 0
    resale_price_nanos: int = 0
    whatif_upstream_cost_nanos: int = 0
    whatif_resale_price_nanos: int = 0
    unpriced_requests: int = 0

    @property
    def margin_nanos(self) -> int:
        return self.resale_price_nanos - self.upstream_cost_nanos

    @property
    def whatif_margin_nanos(self) -> int:
        return self.whatif_resale_price_nanos - self.whatif_upstream_cost_nanos

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "margin_nanos": self.margin_nanos, "whatif_margin_nanos": self.whatif_margin_nanos,
                "delta_resale_nanos": self.whatif_resale_price_nanos - self.resale_price_nanos}


@dataclass
class RerateReport:
    price_book: str
    window: tuple[int, int]
    accounts: list[str] | None
    lines: list[Line] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(getattr(line, name)) for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        names = ("requests", "upstream_cost_nanos", "resale_price_nanos", "margin_nanos",
                 "whatif_upstream_cost_nanos", "whatif_resale_price_nanos", "whatif_margin_nanos", "unpriced_requests")
        return {"result": "rerated", "price_book": self.price_book, "from_unix_ms": self.window[0],
                "to_unix_ms": self.window[1], "accounts": self.accounts or "all",
                "totals": {n: self.total(n) for n in names}, "lines": [line.to_json() for line in self.lines]}

    def render(self) -> str:
        def money(n: int) -> str:
            return f"{n / 1e9:,.6f}"

        out = [f"re-rating under price book {self.price_book} (usage from {self.window[0]} to {self.window[1]} ms)",
               f"{'account':<24} {'model':<20} {'project':<12} {'req':>7} {'charged':>14} {'what-if':>14} "
               f"{'margin':>14} {'what-if margin':>15}"]
        for ln in self.lines:
            out.append(f"{ln.account_id[:24]:<24} {ln.model[:20]:<20} {ln.project[:12] or '-':<12} {ln.requests:>7} "
                       f"{money(ln.resale_price_nanos):>14} {money(ln.whatif_resale_price_nanos):>14} "
                       f"{money(ln.margin_nanos):>14} {money(ln.whatif_margin_nanos):>15}"
                       + (f"  ({ln.unpriced_requests} unpriced)" if ln.unpriced_requests else ""))
        out.append(f"{'total':<58} {self.total('requests'):>7} {money(self.total('resale_price_nanos')):>14} "
                   f"{money(self.total('whatif_resale_price_nanos')):>14} {money(self.total('margin_nanos')):>14} "
                   f"{money(self.total('whatif_margin_nanos')):>15}")
        out.append("(amounts in each account's currency; nothing was written)")
        return "\n".join(out)


def _convert(amount: int, from_currency: str, to_currency: str, fx: dict[str, Decimal]) -> int:
    if from_currency == to_currency:
        return amount
    rate_ = fx.get(f"{from_currency}/{to_currency}")
    if rate_ is None and f"{to_currency}/{from_currency}" in fx:
        rate_ = 1 / fx[f"{to_currency}/{from_currency}"]
    if rate_ is None:
        raise BadUsage(f"the price book is in {from_currency}, usage is in {to_currency}: --fx needs "
                       f"\"{from_currency}/{to_currency}\"")
    return int((Decimal(amount) * rate_).to_integral_value(rounding=ROUND_CEILING))


async def rerate(
    metering: Location, book_path: Path, window: tuple[int, int], *, accounts: list[str] | None = None,
    fx_path: Path | None = None, bars: Bars | None = None,
) -> RerateReport:
    bars = bars or Bars(enabled=False)
    try:
        book: PriceBook = load_price_book_file(book_path)
    except Exception as exc:  # InvalidPriceBook lists every problem
        raise BadUsage(f"--price-book: {exc}") from None
    fx = load_fx(fx_path)
    report = RerateReport(book.version, window, sorted(accounts) if accounts else None)
    lines: dict[tuple[str, str, str, str], Line] = {}
    c = rated_usage.c
    query = select(c.account_id, c.model, c.project, c.currency, c.prompt_tokens, c.completion_tokens,
                   c.cached_prompt_tokens, c.reasoning_tokens, c.upstream_cost_nanos, c.resale_price_nanos,
                   c.cache_write_tokens).where(
        c.occurred_at_unix_ms >= window[0], c.occurred_at_unix_ms < window[1])
    if accounts:
        query = query.where(c.account_id.in_(sorted(accounts)))
    engine = read_only_engine(metering)
    step = bars.task("re-rating", None)
    try:
        async with engine.connect() as conn:
            result = await conn.stream(query)
            async for rows in result.partitions(5000):
                for row in rows:
                    account, model, project, currency, prompt, completion, cached, reasoning, cost, price, written = row
                    line = lines.get((account, model, project, currency))
                    if line is None:
                        line = lines[(account, model, project, currency)] = Line(account, model, project, currency)
                    line.requests += 1
                    line.prompt_tokens += int(prompt)
                    line.completion_tokens += int(completion)
                    line.upstream_cost_nanos += int(cost)
                    line.resale_price_nanos += int(price)
                    new = rate(book, model, UsageFacts(int(prompt), int(completion), int(cached), int(reasoning),
                                                        int(written)))
                    if not new.priced:
                        line.unpriced_requests += 1
                    line.whatif_upstream_cost_nanos += _convert(new.upstream_cost_nanos, book.currency, currency, fx)
                    line.whatif_resale_price_nanos += _convert(new.resale_price_nanos, book.currency, currency, fx)
                step(len(rows))
    finally:
        await engine.dispose()
    report.lines = [lines[k] for k in sorted(lines)]
    return report

