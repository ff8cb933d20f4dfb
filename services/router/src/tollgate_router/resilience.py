"""Retry timing and circuit breakers: when to try again, and which deployments to leave alone for a while.

Pure but for an injected clock (``time.monotonic`` by default) and random source, so every rule is testable
without sleeping.

- :func:`backoff_delay`: exponential backoff with full jitter (a uniform draw in ``[0, min(cap, base·2^n)]``).
- :func:`retry_wait`: the wait before retrying the same deployment, or ``None`` when it must not be retried
  there (its Retry-After does not fit in the request's deadline): the caller falls back to the next one.
- :class:`CircuitBreaker`: closed → open after ``failure_threshold`` consecutive failures, or a failure rate of
  at least ``failure_rate`` over the last ``window`` calls (once ``min_calls`` were seen); open → half-open after
  ``cooldown_seconds``, which lets exactly one probe through; the probe's success closes it, its failure reopens
  it for another cool-down. Fed by live traffic (passive health).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import (
    RouterError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "BreakerSettings",
    "Breakers",
    "CircuitBreaker",
    "ResilienceSettings",
    "backoff_delay",
    "counts_against_health",
    "is_retryable",
    "retry_wait",
]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]`` (``attempt`` counts from 0)."""
    return rng.uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


def is_retryable(error: RouterError) -> bool:
    """Worth another try (here or elsewhere): timeouts, connection errors and 5xx, 429."""
    return isinstance(error, UpstreamUnavailable | UpstreamTimeout | UpstreamRateLimited)


def counts_against_health(error: RouterError) -> bool:
    """A failure of the deployment, not of the request: feeds its breaker (bad credentials included)."""
    return isinstance(error, UpstreamUnavailable | UpstreamTimeout | UpstreamRateLimited | UpstreamAuthFailed)


def retry_wait(
    error: RouterError, attempt: int, *, remaining: float, base: float, cap: float, rng: random.Random
) -> float | None:
    """Seconds to wait before retrying the same deployment; ``None``: don't retry it (fall back instead)."""
    if error.retry_after is not None:  # the provider said when: honour it, or go elsewhere if it is too late
        return float(error.retry_after) if error.retry_after < remaining else None
    delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
    return delay if delay < remaining else None


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    cooldown_seconds: float = 30.0


class CircuitBreaker:
    """One deployment's breaker (see the module's docstring)."""

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._state = CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._recent: deque[bool] = deque(maxlen=settings.window)
        self._probing = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.settings.cooldown_seconds:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to this deployment now? In half-open, True once (the probe) until it reports."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._state, self._probing = HALF_OPEN, True
            return True
        return False

    def available(self) -> bool:
        """Would :meth:`allow` say yes (without taking the probe)?"""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self._probing)

    def record(self, ok: bool) -> None:
        if self._state == HALF_OPEN or self._probing:
            self._probing = False
            if ok:
                self._close()
            else:
                self._open()
            return
        self._recent.append(ok)
        self._consecutive = 0 if ok else self._consecutive + 1
        s = self.settings
        failures = self._recent.count(False)
        if self._consecutive >= s.failure_threshold or (
            len(self._recent) >= s.min_calls and failures / len(self._recent) >= s.failure_rate
        ):
            self._open()

    def release(self) -> None:
        """The probe ended without a verdict (the caller went away): let another probe through."""
        self._probing = False

    def _open(self) -> None:
        self._state, self._opened_at = OPEN, self._clock()

    def _close(self) -> None:
        self._state, self._consecutive = CLOSED, 0
        self._recent.clear()


class Breakers:
    """A breaker per deployment name, created on first use."""

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, deployment: str) -> CircuitBreaker:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            breaker = self._breakers[deployment] = CircuitBreaker(self.settings, self._clock)
        return breaker

    def states(self) -> dict[str, str]:
        return {name: b.state for name, b in self._breakers.items()}


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """Retry, deadline and breaker settings (``ROUTER_*``; see the README)."""

    max_attempts: int = 4
    retries_per_deployment: int = 1
    backoff_base_seconds: float = 0.2
    backoff_cap_seconds: float = 5.0
    request_timeout_seconds: float = 300.0
    latency_epsilon: float = 0.05
    #: Active health checks: a one-token call to each deployment this often; 0 (the default) = off.
    probe_interval_seconds: float = 0.0
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
