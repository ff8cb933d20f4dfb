"""Budgets: spend limits on a key, a team, a project or a whole account, per period. Pure decisions, like domain.py.

A budget has a scope (``key`` | ``team`` | ``project`` | ``account``) and the id it scopes (a key id, a group id,
the account id), a period (``daily`` | ``weekly`` | ``monthly`` | ``total``) and a limit in nano-units. Its spend
counts the captures of the holds counted against it, in the current period: the period turns over on its boundary
in the account's time zone (midnight, Monday midnight, the 1st at midnight), and the spend starts again from 0.

Authorize decides with the same hold arithmetic as the balance: a hold is placed only if, for every budget of the
key's chain, ``limit − spent_in_period − held ≥ amount``; the hold then counts (held) against each of them until
its capture, expiry or reconciliation moves it to spent (or releases it). The ids of those budgets travel on the
HoldPlaced event, so a rebuild from the log moves exactly the budgets the live decision moved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tollgate.events.v1 import billing_pb2

from .alerts import DEFAULT_THRESHOLDS, check_thresholds
from .errors import BudgetExceeded, InvalidArgument

__all__ = [
    "PERIOD_NAMES",
    "SCOPE_NAMES",
    "BudgetRecord",
    "BudgetState",
    "TightestLimit",
    "budget_created",
    "budget_deleted",
    "budget_updated",
    "check_time_zone",
    "in_chain",
    "period_bounds",
    "period_name",
    "scope_name",
    "tightest_limit",
]

INT64_MAX = 2**63 - 1
SCOPE_NAMES = {billing_pb2.BUDGET_SCOPE_KEY: "key", billing_pb2.BUDGET_SCOPE_TEAM: "team",
               billing_pb2.BUDGET_SCOPE_PROJECT: "project", billing_pb2.BUDGET_SCOPE_ACCOUNT: "account"}
PERIOD_NAMES = {billing_pb2.BUDGET_PERIOD_DAILY: "daily", billing_pb2.BUDGET_PERIOD_WEEKLY: "weekly",
                billing_pb2.BUDGET_PERIOD_MONTHLY: "monthly", billing_pb2.BUDGET_PERIOD_TOTAL: "total"}
SCOPES = {name: value for value, name in SCOPE_NAMES.items()}
PERIODS = {name: value for value, name in PERIOD_NAMES.items()}
_TIME_ZONE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


def scope_name(scope: int) -> str:
    name = SCOPE_NAMES.get(scope)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument("scope must be key, team, project or account")
    return str(name)


def period_name(period: int) -> str:
    name = PERIOD_NAMES.get(period)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument("period must be daily, weekly, monthly or total")
    return str(name)


def check_time_zone(time_zone: str) -> str:
    """An IANA zone name ("Europe/Paris"); "" is UTC."""
    name = time_zone or "UTC"
    if not _TIME_ZONE.match(name):
        raise InvalidArgument(f"time_zone {time_zone!r} is not an IANA time zone name")
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(f"time_zone {time_zone!r} is not an IANA time zone name") from None
    return name


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local_midnight(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def period_bounds(period: str, time_zone: str, at_unix_ms: int) -> tuple[int, int]:
    """The [start, end) of the period containing ``at_unix_ms`` in unix ms; (0, 0) for ``total`` (never resets).

    Days start at local midnight (a DST day is 23 or 25 hours long), weeks on Monday, months on the 1st."""
    if period == "total":
        return 0, 0
    zone = _zone(time_zone or "UTC")
    today = datetime.fromtimestamp(at_unix_ms / 1000, UTC).astimezone(zone).date()
    if period == "daily":
        start, end = today, today + timedelta(days=1)
    elif period == "weekly":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = today.replace(day=1)
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    else:
        raise InvalidArgument(f"unknown budget period {period!r}")
    return _local_midnight(start, zone), _local_midnight(end, zone)


@dataclass(frozen=True, slots=True)
class BudgetRecord:
    """A budget row (what the admin API shows)."""

    budget_id: str
    account_id: str
    scope: str
    scope_id: str
    period: str
    limit_nanos: int
    spent_nanos: int
    held_nanos: int
    period_start_unix_ms: int
    time_zone: str
    created_at_unix_ms: int
    updated_at_unix_ms: int | None
    revision: int
    alert_thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    #: The last BudgetThresholdCrossed: its percent (0 = none yet), time and the period start it was crossed in.
    last_crossed_percent: int = 0
    last_crossed_at_unix_ms: int | None = None
    last_crossed_period_start_unix_ms: int = 0

    def spent_at(self, now_unix_ms: int) -> int:
        """Spend in the period containing ``now``: the stored spend belongs to an earlier period once it turns."""
        start, _ = period_bounds(self.period, self.time_zone, now_unix_ms)
        return self.spent_nanos if self.period_start_unix_ms >= start else 0

    def remaining_at(self, now_unix_ms: int) -> int:
        return max(0, self.limit_nanos - self.spent_at(now_unix_ms) - self.held_nanos)


def in_chain(scope: str, scope_id: str, *, account_id: str, key_id: str, team: str, project: str) -> bool:
    """Whether a budget of ``scope``/``scope_id`` applies to a key of this account, team and project."""
    if scope == "account":
        return scope_id == account_id
    if scope == "key":
        return scope_id == key_id
    if scope == "team":
        return bool(team) and scope_id == team
    return scope == "project" and bool(project) and scope_id == project


@dataclass(slots=True)
class BudgetState:
    """One budget as Authorize's batch sees it: what is left of the period, decided against and moved in memory."""

    budget_id: str
    scope: str
    scope_id: str
    period: str
    limit_nanos: int
    spent_nanos: int
    held_nanos: int

    def refusal(self, amount_nanos: int) -> BudgetExceeded | None:
        """The refusal when what is left of this budget does not cover ``amount_nanos``, else None."""
        if self.limit_nanos - self.spent_nanos - self.held_nanos >= amount_nanos:
            return None
        return BudgetExceeded(
            f"the {self.period} budget {self.budget_id} of {self.scope} {self.scope_id!r} does not cover this "
            "request's maximum cost",
            scope=self.scope, scope_id=self.scope_id, budget_id=self.budget_id,
        )


def _limit(limit_nanos: int) -> int:
    if limit_nanos < 0 or limit_nanos > INT64_MAX:
        raise InvalidArgument("limit must be between 0 and 9223372036.854775807")
    return limit_nanos


def _thresholds(percents: Sequence[int]) -> billing_pb2.AlertThresholds:
    return billing_pb2.AlertThresholds(percents=check_thresholds(percents))


def budget_created(budget_id: str, account_id: str, scope: int, scope_id: str, period: int, limit_nanos: int,
                   at_unix_ms: int, alert_thresholds: Sequence[int] | None = None) -> billing_pb2.BudgetCreated:
    """``alert_thresholds`` None = the default 50, 80, 100 %; empty = no alerts."""
    scope_label = scope_name(scope)
    period_name(period)
    if scope_label == "account":
        scope_id = account_id
    if not scope_id or len(scope_id) > 100:
        raise InvalidArgument("scope_id must be 1 to 100 characters")
    event = billing_pb2.BudgetCreated(budget_id=budget_id, account_id=account_id, scope=scope,  # type: ignore[arg-type]
                                      scope_id=scope_id, period=period,  # type: ignore[arg-type]
                                      limit_nanos=_limit(limit_nanos), created_at_unix_ms=at_unix_ms)
    if alert_thresholds is not None:
        event.alert_thresholds.CopyFrom(_thresholds(alert_thresholds))
    return event


def budget_updated(budget: BudgetRecord, limit_nanos: int | None, at_unix_ms: int,
                   alert_thresholds: Sequence[int] | None = None) -> billing_pb2.BudgetUpdated | None:
    """The new limit and/or thresholds (None = unchanged); None when nothing changes."""
    limit = budget.limit_nanos if limit_nanos is None else _limit(limit_nanos)
    thresholds = None if alert_thresholds is None else _thresholds(alert_thresholds)
    if limit == budget.limit_nanos and (thresholds is None or tuple(thresholds.percents) == budget.alert_thresholds):
        return None
    event = billing_pb2.BudgetUpdated(budget_id=budget.budget_id, account_id=budget.account_id,
                                      revision=budget.revision + 1, limit_nanos=limit,
                                      updated_at_unix_ms=at_unix_ms)
    if thresholds is not None:
        event.alert_thresholds.CopyFrom(thresholds)
    return event


def budget_deleted(budget: BudgetRecord, at_unix_ms: int) -> billing_pb2.BudgetDeleted:
    return billing_pb2.BudgetDeleted(budget_id=budget.budget_id, account_id=budget.account_id,
                                     deleted_at_unix_ms=at_unix_ms)


@dataclass(frozen=True, slots=True)
class TightestLimit:
    """What ``GET /v1/key`` shows: the limit of the key's chain with the least left."""

    #: "key_limit" (the key's own lifetime limit) or a budget's scope.
    scope: str
    scope_id: str
    budget_id: str
    period: str
    limit_nanos: int
    remaining_nanos: int
    #: When the period's spend starts again (unix ms); 0 for total.
    resets_at_unix_ms: int


def tightest_limit(key_id: str, key_limit: tuple[int, int] | None, chain: list[BudgetRecord],
                   now_unix_ms: int) -> TightestLimit | None:
    """Among the key's own limit ((limit, remaining) or None) and its chain's budgets, the one with the least left
    (ties: the smaller limit)."""
    found: list[TightestLimit] = []
    if key_limit is not None:
        found.append(TightestLimit("key_limit", key_id, "", "total", key_limit[0], key_limit[1], 0))
    for budget in chain:
        found.append(TightestLimit(budget.scope, budget.scope_id, budget.budget_id, budget.period, budget.limit_nanos,
                                   budget.remaining_at(now_unix_ms),
                                   period_bounds(budget.period, budget.time_zone, now_unix_ms)[1]))
    return min(found, key=lambda t: (t.remaining_nanos, t.limit_nanos), default=None)
