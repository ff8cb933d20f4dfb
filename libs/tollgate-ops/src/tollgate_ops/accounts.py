"""Per-account figures an operator reconciles (balance, held, charges, credits, per-model usage), read from
billing's and metering's tables, and the first event where two copies of an account's history part ways.

The services' own comparisons (:func:`tollgate_billing.rebuild.compare`,
:func:`tollgate_metering.rebuild.compare_databases`) say which rows differ; this says what that means for a
customer and where to start looking.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tollgate_billing.tables import holds, ledger_postings, ledger_transactions, wallets
from tollgate_metering.tables import aggregates, rated_usage

__all__ = ["AccountDiff", "AccountFigures", "ModelUsage", "account_figures", "diff_accounts", "first_difference"]

_CHARGE_KINDS = ("usage_charge", "hold_expiry_charge")


@dataclass
class ModelUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_cost_nanos: int = 0
    resale_price_nanos: int = 0


@dataclass
class AccountFigures:
    currency: str = ""
    balance_nanos: int = 0
    held_nanos: int = 0
    #: Money taken from the wallet for usage (captures and expiry charges), net of hold refunds.
    charges_nanos: int = 0
    credits_nanos: int = 0
    refunds_nanos: int = 0
    open_holds: int = 0
    expired_holds: int = 0
    usage: dict[str, ModelUsage] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "usage"}
        for model, u in sorted(self.usage.items()):
            for k, v in asdict(u).items():
                out[f"usage[{model}].{k}"] = v
        return out


async def account_figures(billing: AsyncEngine | None, metering: AsyncEngine | None) -> dict[str, AccountFigures]:
    figures: dict[str, AccountFigures] = defaultdict(AccountFigures)
    if billing is not None:
        async with billing.connect() as conn:
            for account_id, currency, balance, held in await conn.execute(
                select(wallets.c.account_id, wallets.c.currency, wallets.c.balance_nanos, wallets.c.held_nanos)
            ):
                f = figures[account_id]
                f.currency, f.balance_nanos, f.held_nanos = currency, int(balance), int(held)
            t, p = ledger_transactions, ledger_postings
            rows = await conn.execute(
                select(t.c.account_id, t.c.kind, func.sum(p.c.amount_nanos))
                .join(p, p.c.transaction_id == t.c.transaction_id)
                .where(p.c.ledger_account == literal("wallet:") + t.c.account_id)
                .group_by(t.c.account_id, t.c.kind)
            )
            for account_id, kind, amount in rows:
                f = figures[account_id]
                amount = int(amount or 0)
                if kind in _CHARGE_KINDS:
                    f.charges_nanos += -amount
                elif kind == "hold_refund":
                    f.refunds_nanos += amount
                    f.charges_nanos -= amount
                elif kind == "credit_purchase":
                    f.credits_nanos += amount
            for account_id, status, n in await conn.execute(
                select(holds.c.account_id, holds.c.status, func.count()).group_by(holds.c.account_id, holds.c.status)
            ):
                if status == "open":
                    figures[account_id].open_holds = int(n)
                elif status == "expired":
                    figures[account_id].expired_holds = int(n)
    if metering is not None:
        a = aggregates.c
        async with metering.connect() as conn:
            rows = await conn.execute(
                select(a.account_id, a.model, func.sum(a.requests), func.sum(a.prompt_tokens),
                       func.sum(a.completion_tokens), func.sum(a.upstream_cost_nanos),
                       func.sum(a.resale_price_nanos))
                .group_by(a.account_id, a.model)
            )
            for account_id, model, *sums in rows:
                figures[account_id].usage[model] = ModelUsage(*(int(x or 0) for x in sums))
    return dict(figures)


@dataclass
class AccountDiff:
    account_id: str
    #: field → (live, rebuilt)
    fields: dict[str, tuple[Any, Any]]
    first_event: dict[str, Any] | None = None


def diff_accounts(live: dict[str, AccountFigures], rebuilt: dict[str, AccountFigures]) -> list[AccountDiff]:
    out: list[AccountDiff] = []
    empty: dict[str, Any] = {}
    for account_id in sorted(live.keys() | rebuilt.keys()):
        a = live[account_id].flat() if account_id in live else empty
        b = rebuilt[account_id].flat() if account_id in rebuilt else empty
        changed = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
        if changed:
            out.append(AccountDiff(account_id, changed))
    return out


# --- where two histories part ----------------------------------------------------------------------------------


async def _ledger_history(engine: AsyncEngine, accounts: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
    t, p = ledger_transactions, ledger_postings
    wanted = list(accounts)
    out: dict[str, dict[str, list[Any]]] = defaultdict(dict)
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.account_id, t.c.transaction_id, t.c.kind, t.c.reference, t.c.created_at_unix_ms,
                   p.c.ledger_account, p.c.amount_nanos)
            .join(p, p.c.transaction_id == t.c.transaction_id)
            .where(t.c.account_id.in_(wanted))
        )
        for account_id, tx, kind, reference, at, ledger_account, amount in rows:
            entry = out[account_id].setdefault(tx, [int(at), tx, kind, reference, []])
            entry[4].append((ledger_account, int(amount)))
    return {
        acc: sorted((at, tx, kind, ref, tuple(sorted(legs))) for at, tx, kind, ref, legs in txs.values())
        for acc, txs in out.items()
    }


async def _usage_history(engine: AsyncEngine, accounts: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
    c = rated_usage.c
    columns = [col for col in rated_usage.c if col.name != "rated_at_unix_ms"]
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    async with engine.connect() as conn:
        for row in await conn.execute(select(*columns).where(c.account_id.in_(list(accounts)))):
            values = dict(row._mapping)
            values["tags"] = json.dumps(json.loads(values["tags"]), sort_keys=True)
            out[values["account_id"]].append(
                (int(values["occurred_at_unix_ms"]), values["request_id"], tuple(sorted(values.items())))
            )
    return {acc: sorted(rows) for acc, rows in out.items()}


Split = tuple[int, tuple[Any, ...] | None, tuple[Any, ...] | None]


def _first_split(live: list[tuple[Any, ...]], rebuilt: list[tuple[Any, ...]]) -> Split | None:
    for i in range(max(len(live), len(rebuilt))):
        a = live[i] if i < len(live) else None
        b = rebuilt[i] if i < len(rebuilt) else None
        if a != b:
            return i, a, b
    return None


async def first_difference(
    live_billing: AsyncEngine | None, rebuilt_billing: AsyncEngine | None,
    live_metering: AsyncEngine | None, rebuilt_metering: AsyncEngine | None,
    accounts: list[str],
) -> dict[str, dict[str, Any]]:
    """Per account, the earliest event (by time) at which live and rebuilt differ: a ledger transaction (named by
    its reference, the usage event or hold it settles) or a rated request (named by its request id = event id)."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if live_billing is not None and rebuilt_billing is not None:
        a, b = await _ledger_history(live_billing, accounts), await _ledger_history(rebuilt_billing, accounts)
        for acc in accounts:
            split = _first_split(a.get(acc, []), b.get(acc, []))
            if split is not None:
                _, x, y = split
                first = x if y is None or (x is not None and x < y) else y
                assert first is not None
                found[acc].append({
                    "at_unix_ms": first[0], "event": first[3] or first[1], "ledger_transaction": first[1],
                    "kind": first[2], "live": _legs(x), "rebuilt": _legs(y),
                })
    if live_metering is not None and rebuilt_metering is not None:
        a, b = await _usage_history(live_metering, accounts), await _usage_history(rebuilt_metering, accounts)
        for acc in accounts:
            split = _first_split(a.get(acc, []), b.get(acc, []))
            if split is not None:
                _, x, y = split
                first = x if y is None or (x is not None and x < y) else y
                assert first is not None
                detail: dict[str, Any] = {"at_unix_ms": first[0], "event": first[1], "rated_usage": first[1]}
                if x is not None and y is not None and x[1] == y[1]:
                    xa, ya = dict(x[2]), dict(y[2])
                    detail["columns"] = {k: [xa[k], ya.get(k)] for k in xa if xa[k] != ya.get(k)}
                else:
                    detail["live"] = x[1] if x is not None else None
                    detail["rebuilt"] = y[1] if y is not None else None
                found[acc].append(detail)
    return {acc: min(items, key=lambda d: (d["at_unix_ms"], d["event"])) for acc, items in found.items()}


def _legs(tx: tuple[Any, ...] | None) -> Any:
    if tx is None:
        return None
    return {"transaction": tx[1], "kind": tx[2], "postings": [list(leg) for leg in tx[4]]}
