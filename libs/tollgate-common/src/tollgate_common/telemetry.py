"""OpenTelemetry set-up from the standard ``OTEL_*`` variables, and Prometheus metrics.

Traces flow HTTP → gRPC (interceptors below) → Kafka (``traceparent`` header, see :mod:`tollgate_common.events`).
With no ``OTEL_EXPORTER_OTLP_ENDPOINT`` spans are still created (ids appear in logs) but not exported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = [
    "configure_telemetry",
    "current_traceparent",
    "extract_traceparent",
    "grpc_client_interceptors",
    "grpc_server_interceptors",
    "start_metrics_server",
]


def configure_telemetry(service: str) -> Callable[[], None]:
    """Install a tracer provider for ``tollgate-<service>``; returns a shutdown function that flushes spans."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return lambda: None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"tollgate-{service}")})
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def grpc_server_interceptors() -> Sequence[grpc.aio.ServerInterceptor]:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def grpc_client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span, or "" outside a trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def extract_traceparent(traceparent: str):  # type: ignore[no-untyped-def]
    """An OTel context to start a consumer span under, from a ``traceparent`` header."""
    return propagate.extract({"traceparent": traceparent} if traceparent else {})


def start_metrics_server(port: int) -> None:
    """Serve Prometheus metrics on ``port`` (0 disables)."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=os.environ.get("TOLLGATE_METRICS_ADDR", "0.0.0.0"))
