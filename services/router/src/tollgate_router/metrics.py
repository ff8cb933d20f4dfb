"""Prometheus metrics of the router: what each provider is doing to the gateway's callers.

Exposed on ``ROUTER_METRICS_PORT``; a label set per provider and outcome, never per caller or model request.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["BREAKER_OPEN", "UPSTREAM_CALLS", "UPSTREAM_SECONDS", "UPSTREAM_TOKENS"]

UPSTREAM_CALLS = Counter(
    "tollgate_router_upstream_calls_total",
    "Upstream calls by provider, mode (complete/stream) and outcome (ok or the error reason).",
    ["provider", "mode", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "tollgate_router_upstream_seconds",
    "Time from sending an upstream call to its last byte.",
    ["provider", "mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UPSTREAM_TOKENS = Counter(
    "tollgate_router_upstream_tokens_total",
    "Tokens the providers reported, by kind (prompt/completion).",
    ["provider", "kind"],
)
BREAKER_OPEN = Gauge(
    "tollgate_router_breaker_open",
    "1 while a deployment's circuit breaker is open or half-open, 0 once it closed again.",
    ["deployment"],
)
