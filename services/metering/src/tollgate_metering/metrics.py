"""Prometheus metrics for metering (served when METERING_METRICS_PORT is set)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["EVENTS_ARCHIVED", "FIELDS_SHORTENED", "USAGE_RATED", "USAGE_UNPRICED"]

USAGE_RATED = Counter("tollgate_metering_usage_rated_total", "Usage events rated and stored")
USAGE_UNPRICED = Counter(
    "tollgate_metering_usage_unpriced_total", "Usage events whose model is missing from the price book (rated at zero)"
)
EVENTS_ARCHIVED = Counter("tollgate_metering_events_archived_total", "Events appended to the hash-chained archive")
FIELDS_SHORTENED = Counter(
    "tollgate_metering_fields_shortened_total",
    "Descriptive strings of usage events shortened to fit their column (the archive keeps them whole)",
)
