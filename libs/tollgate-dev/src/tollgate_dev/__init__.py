"""Development-only tooling: the embedded Kafka-compatible broker, the mock upstream provider, the process
supervisor behind ``make run``, and the demo seeding. Nothing here is deployed to production.
"""
