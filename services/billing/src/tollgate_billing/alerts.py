"""Alerts: a budget's spend crossing a percentage of its limit, an account's balance going below a threshold.

Pure decisions, like budgets.py; :mod:`~tollgate_billing.alert_changes` reads the rows and writes the events.

Why captures and not holds: a hold is a reservation that is mostly given back (the hold is for the maximum output,
the usage is what was produced), so "80 % of the budget spent" on holds would be sent for money never spent. The
spend and the balance move for good on capture, expiry and reconciliation, and those are where billing looks for a
crossing: in the same transaction, right after the change, reading the rows it just moved. It costs an alert one
usage-consumer batch of delay after the hold that used the money, which is harmless: the hold arithmetic already
stops the spend at the limit; alerts are notices, not guards. The same check runs after a budget's limit or
thresholds change (a lowered limit may be crossed at once) and after a balance threshold is set.

Once per threshold per period: a budget remembers the last threshold crossed with the period start and budget
revision it was crossed in; a threshold is armed when it is above that one, or when the period or the revision
differs (a new period, a changed limit or threshold list re-arms them all). The event id is made of exactly those
(budget, revision, period start, percent), so a retry of the same crossing is the same event.

Balance: one "balance below X" per account. BalanceLow when the balance goes below X while armed; BalanceRestored
(re-arming it) when a credit, a refund or a new threshold brings the balance back to X or above. Both numbered per
account, so the ids are deterministic too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tollgate.events.v1 import billing_pb2

from .errors import InvalidArgument

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MAX_THRESHOLDS",
    "balance_change",
    "check_thresholds",
    "crossed",
    "format_thresholds",
    "parse_thresholds",
]

DEFAULT_THRESHOLDS: tuple[int, ...] = (50, 80, 100)
MAX_THRESHOLDS = 10


def check_thresholds(percents: Iterable[int]) -> tuple[int, ...]:
    """Whole percentages 1..100, at most ten; returned ascending without repeats."""
    values = list(percents)
    if len(values) > MAX_THRESHOLDS:
        raise InvalidArgument(f"at most {MAX_THRESHOLDS} alert thresholds")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise InvalidArgument("alert thresholds must be whole percentages from 1 to 100")
    return tuple(sorted(set(values)))


def format_thresholds(percents: Sequence[int]) -> str:
    return ",".join(str(p) for p in percents)


def parse_thresholds(stored: str) -> tuple[int, ...]:
    return tuple(int(p) for p in stored.split(",") if p)


def crossed(thresholds: Sequence[int], *, spent_nanos: int, limit_nanos: int, armed_above: int) -> list[int]:
    """The thresholds above ``armed_above`` that a spend of ``spent_nanos`` reaches (an exact hit counts), lowest
    first; nothing for no spend (a budget of limit 0 with no spend has crossed nothing)."""
    if spent_nanos <= 0:
        return []
    return [t for t in thresholds if t > armed_above and spent_nanos * 100 >= t * limit_nanos]


def balance_change(*, account_id: str, balance_nanos: int, threshold_nanos: int, low: bool, sequence: int,
                   currency: str, at_unix_ms: int) -> billing_pb2.BalanceLow | billing_pb2.BalanceRestored | None:
    """What the balance now means for the account's alert: going low (armed, below X), restored (low, at X or above,
    or the alert turned off), or nothing."""
    if not low and threshold_nanos > 0 and balance_nanos < threshold_nanos:
        return billing_pb2.BalanceLow(account_id=account_id, sequence=sequence + 1, threshold_nanos=threshold_nanos,
                                      balance_nanos=balance_nanos, currency=currency, crossed_at_unix_ms=at_unix_ms)
    if low and (threshold_nanos <= 0 or balance_nanos >= threshold_nanos):
        return billing_pb2.BalanceRestored(account_id=account_id, sequence=sequence, threshold_nanos=threshold_nanos,
                                           balance_nanos=balance_nanos, restored_at_unix_ms=at_unix_ms)
    return None
