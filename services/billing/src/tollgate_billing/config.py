"""Billing's settings: ``BILLING_*`` environment variables only, validated at start (exit 2 on a bad value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tollgate_common.config import EnvReader
from tollgate_common.internal_auth import InternalKeys, internal_keys_from_env
from tollgate_common.kafka_security import KafkaSecurity, kafka_security_from_env

from .domain import UnknownUsageCharge
from .webhook_config import WebhookSettings, webhook_settings_from_env

__all__ = ["DEFAULT_SCHEMA", "Settings"]

#: The PostgreSQL schema billing owns (SQLite has no schemas and ignores it).
DEFAULT_SCHEMA = "billing"


@dataclass(frozen=True)
class Settings:
    """Everything billing reads from its environment. Tests build it directly (``Settings(...)``)."""

    database_url: str = "sqlite:///var/billing.db"
    #: PostgreSQL schema; tests use a fresh one each.
    database_schema: str = DEFAULT_SCHEMA
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50053
    #: None runs without Kafka (in-process tests): events stay in the outbox, no usage is consumed.
    kafka_bootstrap_servers: str | None = "127.0.0.1:9092"
    metering_addr: str = "127.0.0.1:50054"
    hold_ttl_seconds: int = 600
    #: How long past its TTL a hold is kept open while rated usage lags (usage_lag.py) before it is captured in
    #: full anyway (and reconciled when its usage arrives).
    hold_max_extension_seconds: int = 3600
    #: What a request a provider may have served without its usage being known is charged (domain.py).
    unknown_usage_charge: UnknownUsageCharge = UnknownUsageCharge.PROMPT
    #: How often open holds are checked against their TTL.
    hold_sweep_seconds: float = 5.0
    #: How often metering's price book is fetched again (until the first load: every second).
    price_book_refresh_seconds: float = 30.0
    #: How long a resolved API key stays in the in-process cache. A revocation or rotation through this replica
    #: evicts the key at once; on the other replicas it takes effect within this many seconds (keep it ≤ 1).
    key_cache_seconds: float = 1.0
    metrics_port: int = 0
    log_level: str = "INFO"
    #: Seconds in-flight calls get to finish on SIGTERM.
    shutdown_grace_seconds: float = 10.0

    #: The internal-plane secret (TOLLGATE_INTERNAL_SECRET); empty: internal calls unauthenticated, which
    #: only development allows (see tollgate_common.internal_auth).
    internal_keys: InternalKeys = field(default_factory=InternalKeys)
    #: TLS/SASL for every Kafka client (``<PREFIX>_KAFKA_SECURITY_PROTOCOL`` etc., see kafka_security.py).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: Alert webhooks (``BILLING_WEBHOOK_*``, webhook_config.py).
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader("BILLING", environ)
        database_url = env.str("DATABASE_URL", cls.database_url)
        try:
            driver = make_url(database_url).drivername
            if not driver.startswith(("sqlite", "postgresql", "postgres")):
                env.problems.append(f"BILLING_DATABASE_URL must be sqlite:///… or postgresql://…, not {driver}://")
        except ArgumentError:
            env.problems.append(f"BILLING_DATABASE_URL={database_url!r} is not a database URL")
        settings = cls(
            internal_keys=internal_keys_from_env(env),
            kafka_security=kafka_security_from_env(env),
            webhooks=webhook_settings_from_env(env),
            database_url=database_url,
            database_schema=env.str("DATABASE_SCHEMA", DEFAULT_SCHEMA),
            grpc_host=env.str("GRPC_HOST", cls.grpc_host),
            grpc_port=env.port("GRPC_PORT", cls.grpc_port),
            kafka_bootstrap_servers=env.str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            metering_addr=env.str("METERING_ADDR", cls.metering_addr),
            hold_ttl_seconds=env.int("HOLD_TTL_SECONDS", cls.hold_ttl_seconds, minimum=1),
            hold_max_extension_seconds=env.int("HOLD_MAX_EXTENSION_SECONDS", cls.hold_max_extension_seconds,
                                               minimum=0),
            unknown_usage_charge=_unknown_usage_charge(env),
            hold_sweep_seconds=env.float("HOLD_SWEEP_SECONDS", cls.hold_sweep_seconds, minimum=0.05),
            price_book_refresh_seconds=env.float(
                "PRICE_BOOK_REFRESH_SECONDS", cls.price_book_refresh_seconds, minimum=0.1
            ),
            key_cache_seconds=env.float("KEY_CACHE_SECONDS", cls.key_cache_seconds, minimum=0.0),
            metrics_port=env.port("METRICS_PORT", cls.metrics_port),
            log_level=_log_level(env),
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds, minimum=0.0),
        )
        env.check()
        return settings


def _unknown_usage_charge(env: EnvReader) -> UnknownUsageCharge:
    value = (env.raw("UNKNOWN_USAGE_CHARGE") or UnknownUsageCharge.PROMPT.value).lower()
    try:
        return UnknownUsageCharge(value)
    except ValueError:
        env.problems.append(f"BILLING_UNKNOWN_USAGE_CHARGE={value!r} must be one of none, prompt, hold")
        return UnknownUsageCharge.PROMPT


def _log_level(env: EnvReader) -> str:
    level = (env.raw("LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        env.problems.append(f"BILLING_LOG_LEVEL={level!r} must be one of DEBUG, INFO, WARNING, ERROR")
        return "INFO"
    return level
