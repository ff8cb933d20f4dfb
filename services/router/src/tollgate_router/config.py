"""Router settings, read once at start from the environment (``ROUTER_*``), the catalogue included.

Everything is validated up front, so a bad deployment exits 2 with every problem listed instead of failing on
its first request. The catalogue itself is read by :mod:`tollgate_router.catalogue_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tollgate_common.config import EnvReader
from tollgate_common.internal_auth import InternalKeys, internal_keys_from_env
from tollgate_common.kafka_security import KafkaSecurity, kafka_security_from_env

from .catalogue_config import catalogue_from_env, catalogue_from_file
from .domain import Catalogue
from .price_check import PRICE_CHECK_MODES
from .resilience import BreakerSettings, ResilienceSettings
from .upstream_http import UpstreamLimits

__all__ = ["Settings"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class Settings:
    catalogue: Catalogue
    #: Where the catalogue came from ("env" or the file path), for the start-up log line.
    catalogue_source: str = "env"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    #: Bounds the whole answer of a non-streaming call, and each silence (headers, gap between chunks) of a stream.
    upstream_timeout_seconds: float = 60.0
    #: Size of the keep-alive pool shared by every provider.
    upstream_max_connections: int = 1000
    #: How much of an answer is read: a larger one is refused as an upstream error (``ROUTER_MAX_RESPONSE_BYTES``,
    #: ``ROUTER_MAX_STREAM_EVENT_BYTES``).
    upstream_limits: UpstreamLimits = field(default_factory=UpstreamLimits)
    #: On SIGTERM, in-flight calls (streams included) get this long to finish before they are cut.
    shutdown_grace_seconds: float = 15.0
    metrics_port: int = 0
    log_level: str = "INFO"
    #: Retries, fallback, deadline and breakers (``ROUTER_MAX_ATTEMPTS``, ``ROUTER_BREAKER_*``…).
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    #: The router's own database: the outbox of its ``AttemptRecorded`` events.
    database_url: str = "sqlite:///var/router.db"
    database_schema: str = "router"
    #: Empty: attempts stay in the outbox (logged once at start) until a broker is configured.
    kafka_bootstrap_servers: str = ""

    #: The internal-plane secret (TOLLGATE_INTERNAL_SECRET); empty: internal calls unauthenticated, which
    #: only development allows (see tollgate_common.internal_auth).
    internal_keys: InternalKeys = field(default_factory=InternalKeys)
    #: TLS/SASL for every Kafka client (``<PREFIX>_KAFKA_SECURITY_PROTOCOL`` etc., see kafka_security.py).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: At start, ``python -m tollgate_router`` compares the catalogue with metering's price book
    #: (:mod:`tollgate_router.price_check`): ``required`` exits 2 on a difference, ``warn`` logs it, ``off`` skips.
    price_check: str = "required"
    metering_addr: str = "127.0.0.1:50054"
    #: How long the check waits for metering to answer (it may be starting too).
    price_check_timeout_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader("ROUTER", environ)
        providers_file = env.str("PROVIDERS_FILE")
        if providers_file:
            catalogue, problems = catalogue_from_file(Path(providers_file), env.environ)
            problems = [f"{env.name('PROVIDERS_FILE')}={providers_file}: {p}" for p in problems]
        else:
            catalogue, problems = catalogue_from_env(env.str("MOCK_BASE_URL"), env.environ)
        env.problems.extend(problems)
        settings = cls(
            internal_keys=internal_keys_from_env(env),
            kafka_security=kafka_security_from_env(env),
            catalogue=catalogue,
            catalogue_source=providers_file or "env",
            grpc_host=env.str("GRPC_HOST", "127.0.0.1"),
            grpc_port=env.port("GRPC_PORT", 50051),
            upstream_timeout_seconds=env.float("UPSTREAM_TIMEOUT_SECONDS", 60.0, minimum=0.001),
            upstream_max_connections=env.int("UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1, maximum=100_000),
            upstream_limits=UpstreamLimits(
                max_body_bytes=env.int("MAX_RESPONSE_BYTES", 32 * 2**20, minimum=1024, maximum=2**31),
                max_event_bytes=env.int("MAX_STREAM_EVENT_BYTES", 8 * 2**20, minimum=1024, maximum=2**31),
            ),
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", 15.0, minimum=0.0),
            metrics_port=env.port("METRICS_PORT", 0),
            log_level=env.str("LOG_LEVEL", "INFO").upper(),
            resilience=ResilienceSettings(
                max_attempts=env.int("MAX_ATTEMPTS", 4, minimum=1, maximum=20),
                retries_per_deployment=env.int("RETRIES_PER_DEPLOYMENT", 1, minimum=0, maximum=10),
                backoff_base_seconds=env.float("BACKOFF_BASE_SECONDS", 0.2, minimum=0.0),
                backoff_cap_seconds=env.float("BACKOFF_CAP_SECONDS", 5.0, minimum=0.0),
                request_timeout_seconds=env.float("REQUEST_TIMEOUT_SECONDS", 300.0, minimum=0.001),
                latency_epsilon=env.float("LATENCY_EPSILON", 0.05, minimum=0.0),
                probe_interval_seconds=env.float("PROBE_INTERVAL_SECONDS", 0.0, minimum=0.0),
                breaker=BreakerSettings(
                    failure_threshold=env.int("BREAKER_FAILURE_THRESHOLD", 5, minimum=1, maximum=10_000),
                    failure_rate=env.float("BREAKER_FAILURE_RATE", 0.5, minimum=0.01),
                    window=env.int("BREAKER_WINDOW", 20, minimum=1, maximum=10_000),
                    min_calls=env.int("BREAKER_MIN_CALLS", 10, minimum=1, maximum=10_000),
                    cooldown_seconds=env.float("BREAKER_COOLDOWN_SECONDS", 30.0, minimum=0.0),
                ),
            ),
            database_url=env.str("DATABASE_URL", "sqlite:///var/router.db"),
            database_schema=env.str("DATABASE_SCHEMA", "router"),
            kafka_bootstrap_servers=env.str("KAFKA_BOOTSTRAP_SERVERS"),
            price_check=env.str("PRICE_CHECK", "required").lower(),
            metering_addr=env.str("METERING_ADDR", "127.0.0.1:50054"),
            price_check_timeout_seconds=env.float("PRICE_CHECK_TIMEOUT_SECONDS", 30.0, minimum=0.1),
        )
        if settings.price_check not in PRICE_CHECK_MODES:
            env.problems.append(
                f"{env.name('PRICE_CHECK')}={settings.price_check!r} must be one of {', '.join(PRICE_CHECK_MODES)}"
            )
        if settings.log_level not in _LEVELS:
            env.problems.append(f"{env.name('LOG_LEVEL')}={settings.log_level!r} must be one of {', '.join(_LEVELS)}")
        env.check()
        return settings
