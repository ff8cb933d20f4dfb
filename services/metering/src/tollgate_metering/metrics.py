"""Prometheus metrics for metering (served when METERING_METRICS_PORT is set)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["EVENTS_ARCHIVED", "USAGE_RATED", "USAGE_UNPRICED"]

USAGE_RATED = Counter("tollgate_metering_usage_rated_total", "Usage events rated and stored")
USAGE_UNPRICED = Counter(
    "tollgate_metering_usage_unpriced_total", "Usage events whose model is missing from the price book (rated at zero)"
)
EVENTS_ARCHIVED = Counter("tollgate_metering_events_archived_total", "Events appended to the hash-chained archive")
