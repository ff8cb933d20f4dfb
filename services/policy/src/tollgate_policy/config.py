"""Policy's settings: ``POLICY_*`` environment variables only, validated at start (exit 2 on a bad value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tollgate_common.config import EnvReader
from tollgate_common.internal_auth import InternalKeys, in_development, internal_keys_from_env
from tollgate_common.kafka_security import KafkaSecurity, kafka_security_from_env
from tollgate_dlp.limits import Limits

__all__ = ["DEFAULT_SCHEMA", "Settings"]

#: The PostgreSQL schema policy owns (SQLite has no schemas and ignores it).
DEFAULT_SCHEMA = "policy"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    """Everything policy reads from its environment. Tests build it directly (``Settings(...)``)."""

    database_url: str = "sqlite:///var/policy.db"
    #: PostgreSQL schema; tests use a fresh one each.
    database_schema: str = DEFAULT_SCHEMA
    grpc_host: str = "0.0.0.0"
    #: 0 picks a free port (tests); the port actually bound is what ``PolicyApp.start`` returns.
    grpc_port: int = 50052
    #: How long a policy read from the database is trusted before it is read again. SetPolicy updates this
    #: replica's cache at once; other replicas see a change after at most this long.
    cache_ttl_seconds: float = 30.0
    #: How often ``WatchPolicies`` sends a heartbeat (POLICY_WATCH_HEARTBEAT_SECONDS); a watcher that hears none
    #: for three of them stops trusting what it holds.
    watch_heartbeat_seconds: float = 5.0
    metrics_port: int = 0
    log_level: str = "INFO"
    #: Seconds in-flight calls get to finish on SIGTERM.
    shutdown_grace_seconds: float = 10.0
    #: Kafka for PolicyDecided events (POLICY_KAFKA_BOOTSTRAP_SERVERS). Empty: events wait in the outbox.
    kafka_bootstrap_servers: str = ""
    #: HMAC key for the match hashes in PolicyDecided (POLICY_HASH_KEY). Empty: the public development key
    #: (events.DEV_HASH_KEY), with a warning at start; required outside development (exit 2).
    hash_key: str = field(default="", repr=False)

    #: The internal-plane secret (TOLLGATE_INTERNAL_SECRET); empty: internal calls unauthenticated, which
    #: only development allows (see tollgate_common.internal_auth).
    internal_keys: InternalKeys = field(default_factory=InternalKeys)
    #: Inspect's caps and the large-scan pool (limits.py): POLICY_MAX_INSPECT_TEXTS, POLICY_MAX_INSPECT_CHARS,
    #: POLICY_SCAN_OFFLOAD_CHARS, POLICY_SCAN_THREADS, POLICY_LARGE_SCANS_PER_ACCOUNT,
    #: POLICY_LARGE_SCAN_QUEUE_PER_ACCOUNT.
    limits: Limits = field(default_factory=Limits)
    #: TLS/SASL for every Kafka client (``<PREFIX>_KAFKA_SECURITY_PROTOCOL`` etc., see kafka_security.py).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader("POLICY", environ)
        database_url = env.str("DATABASE_URL", cls.database_url)
        try:
            driver = make_url(database_url).drivername
            if not driver.startswith(("sqlite", "postgresql", "postgres")):
                env.problems.append(f"POLICY_DATABASE_URL must be sqlite:///… or postgresql://…, not {driver}://")
        except ArgumentError:
            env.problems.append(f"POLICY_DATABASE_URL={database_url!r} is not a database URL")
        log_level = (env.raw("LOG_LEVEL") or cls.log_level).upper()
        if log_level not in _LOG_LEVELS:
            env.problems.append(f"POLICY_LOG_LEVEL={log_level!r} must be one of {', '.join(_LOG_LEVELS)}")
            log_level = cls.log_level
        settings = cls(
            internal_keys=internal_keys_from_env(env),
            kafka_security=kafka_security_from_env(env),
            database_url=database_url,
            database_schema=env.str("DATABASE_SCHEMA", DEFAULT_SCHEMA),
            grpc_host=env.str("GRPC_HOST", cls.grpc_host),
            grpc_port=env.port("GRPC_PORT", cls.grpc_port),
            cache_ttl_seconds=env.float("CACHE_TTL_SECONDS", cls.cache_ttl_seconds, minimum=0.0),
            watch_heartbeat_seconds=env.float("WATCH_HEARTBEAT_SECONDS", cls.watch_heartbeat_seconds, minimum=0.05),
            metrics_port=env.port("METRICS_PORT", cls.metrics_port),
            log_level=log_level,
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds, minimum=0.0),
            kafka_bootstrap_servers=env.str("KAFKA_BOOTSTRAP_SERVERS", ""),
            hash_key=env.str("HASH_KEY", ""),
            limits=Limits(
                max_texts=env.int("MAX_INSPECT_TEXTS", Limits.max_texts, minimum=1),
                max_chars=env.int("MAX_INSPECT_CHARS", Limits.max_chars, minimum=1),
                offload_chars=env.int("SCAN_OFFLOAD_CHARS", Limits.offload_chars, minimum=0),
                scan_threads=env.int("SCAN_THREADS", Limits.scan_threads, minimum=1, maximum=64),
                large_scans_per_account=env.int("LARGE_SCANS_PER_ACCOUNT", Limits.large_scans_per_account, minimum=1),
                large_scan_queue_per_account=env.int(
                    "LARGE_SCAN_QUEUE_PER_ACCOUNT", Limits.large_scan_queue_per_account, minimum=0
                ),
            ),
        )
        if not settings.hash_key and not in_development(env.environ):
            # The development key is public: match hashes made with it identify a card number to anyone.
            env.problems.append("POLICY_HASH_KEY is required outside development (TOLLGATE_ENV)")
        env.check()
        return settings
