"""Tollgate's shared plumbing: settings, telemetry, logging, the event envelope, Kafka, gRPC and database helpers.

No domain logic lives here; each service owns its own.
"""
