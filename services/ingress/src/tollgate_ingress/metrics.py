"""Prometheus metrics of one ingress app, on its own registry (so several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "tollgate_ingress_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "tollgate_ingress_upstream_seconds",
            "Latency of gRPC calls to billing, policy and router (for streams: to the last message).",
            ["service", "rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.usage_events = Counter(
            "tollgate_ingress_usage_events",
            "UsageRecorded events by outcome and by how they left (kafka directly, or the outbox).",
            ["outcome", "path"],
            registry=self.registry,
        )
        self.outbox_published = Counter(
            "tollgate_ingress_outbox_published",
            "Usage events published from the outbox after Kafka had been unreachable.",
            registry=self.registry,
        )
        self.stream_client_disconnects = Counter(
            "tollgate_ingress_stream_client_disconnects",
            "Streams whose client went away before the end (their usage is still drained and billed).",
            registry=self.registry,
        )
        self.streams_in_flight = Gauge(
            "tollgate_ingress_streams_in_flight",
            "Router streams being consumed, including those whose client is gone.",
            registry=self.registry,
        )
