"""resilience: backoff bounds, Retry-After against the deadline, the breaker's state machine (injected clock)."""

from __future__ import annotations

import random

from tollgate_router.errors import (
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollgate_router.resilience import (
    Breakers,
    BreakerSettings,
    CircuitBreaker,
    backoff_delay,
    counts_against_health,
    is_retryable,
    retry_wait,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_full_jitter_within_the_exponential_bound_and_the_cap() -> None:
    rng = random.Random(7)
    for attempt in range(8):
        bound = min(2.0, 0.1 * 2**attempt)
        draws = [backoff_delay(attempt, base=0.1, cap=2.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in draws)
        assert max(draws) > bound * 0.8 and min(draws) < bound * 0.2  # spread over the whole range
    assert backoff_delay(1000, base=0.1, cap=2.0, rng=rng) <= 2.0


def test_retry_after_is_honoured_only_when_it_fits_the_deadline() -> None:
    rng = random.Random(1)
    limited = UpstreamRateLimited("slow down", retry_after=2)
    assert retry_wait(limited, 0, remaining=10.0, base=0.1, cap=1.0, rng=rng) == 2.0
    assert retry_wait(limited, 0, remaining=1.5, base=0.1, cap=1.0, rng=rng) is None
    wait = retry_wait(UpstreamUnavailable("5xx"), 2, remaining=10.0, base=0.1, cap=1.0, rng=rng)
    assert wait is not None and 0 <= wait <= 0.4
    assert retry_wait(UpstreamUnavailable("5xx"), 5, remaining=0.0, base=0.1, cap=1.0, rng=rng) is None


def test_which_errors_are_retried_and_which_feed_the_breaker() -> None:
    assert all(is_retryable(e) for e in (UpstreamTimeout("t"), UpstreamUnavailable("u"), UpstreamRateLimited("r")))
    assert not any(is_retryable(e) for e in (UpstreamRejected("r"), InvalidRequest("i"), UpstreamAuthFailed("a")))
    assert counts_against_health(UpstreamAuthFailed("a")) and not counts_against_health(UpstreamRejected("r"))


def test_breaker_opens_after_consecutive_failures_and_recovers_through_one_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=3, min_calls=100, cooldown_seconds=10), clock)
    for _ in range(2):
        breaker.record(False)
    breaker.record(True)  # resets the run
    for _ in range(2):
        breaker.record(False)
    assert breaker.state == "closed" and breaker.allow()
    breaker.record(False)
    assert breaker.state == "open" and not breaker.allow() and not breaker.available()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half_open" and breaker.available()
    assert breaker.allow()  # the one probe
    assert not breaker.allow() and not breaker.available()  # nobody else while it runs
    breaker.record(False)  # probe failed: open for another cool-down
    assert breaker.state == "open"
    clock.now += 10
    assert breaker.allow()
    breaker.record(True)
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        BreakerSettings(failure_threshold=100, failure_rate=0.5, window=10, min_calls=10, cooldown_seconds=5), clock
    )
    for i in range(9):
        breaker.record(i % 2 == 0)  # alternating: never 2 failures in a row
    assert breaker.state == "closed"  # 9 calls < min_calls
    breaker.record(False)  # 5 failures of 10
    assert breaker.state == "open"


def test_a_probe_without_verdict_is_released_and_breakers_are_per_deployment() -> None:
    clock = Clock()
    breakers = Breakers(BreakerSettings(failure_threshold=1, cooldown_seconds=1), clock)
    breakers["a"].record(False)
    assert breakers.states() == {"a": "open"}
    assert breakers["b"].allow()
    clock.now += 1
    assert breakers["a"].allow() and not breakers["a"].allow()
    breakers["a"].release()
    assert breakers["a"].allow()
