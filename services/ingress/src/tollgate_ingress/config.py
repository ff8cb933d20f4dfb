"""Ingress settings, read once at start from ``INGRESS_*`` variables (see README.md for the full table).

Validated up front so a bad deployment fails at start with one clear message (exit 2), not on the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tollgate_common.config import EnvReader
from tollgate_common.internal_auth import InternalKeys, in_development, internal_keys_from_env
from tollgate_common.kafka_security import KafkaSecurity, kafka_security_from_env

from .operators import Operator, parse_operators

__all__ = ["Settings"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Outside development a shorter INGRESS_ADMIN_TOKEN is refused at start: it guards credits and keys.
MIN_ADMIN_TOKEN_LENGTH = 32


@dataclass(frozen=True, slots=True)
class Settings:
    admin_token: str
    host: str = "127.0.0.1"
    port: int = 8080
    #: Prometheus ``/metrics`` on its own port (at ``TOLLGATE_METRICS_ADDR``, default 127.0.0.1), never on the
    #: public port beside the API; 0: not served.
    metrics_port: int = 9464
    billing_addr: str = "127.0.0.1:50053"
    policy_addr: str = "127.0.0.1:50052"
    router_addr: str = "127.0.0.1:50051"
    #: Metering, for the usage analytics routes only (never on the request path).
    metering_addr: str = "127.0.0.1:50054"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    outbox_database_url: str = "sqlite:///var/ingress-outbox.db"
    log_level: str = "INFO"
    #: A usage event not acknowledged by Kafka within this time goes to the outbox instead (it may then be
    #: published twice, which consumers dedupe on the event id).
    kafka_send_timeout_seconds: float = 5.0
    #: Deadline for billing and policy calls (they are local, fast services).
    rpc_timeout_seconds: float = 10.0
    #: Deadline for a router call: covers the upstream model's whole answer, including retries and fallbacks.
    router_timeout_seconds: float = 300.0
    #: On SIGTERM, in-flight requests (streams included) get this long to finish before they are cut.
    shutdown_grace_seconds: float = 30.0
    #: Larger request bodies are refused (413) before they are read in full.
    max_body_bytes: int = 32 * 1024 * 1024
    #: Failed API keys and admin tokens a peer address may send per minute before it gets 429 (0: no throttle).
    auth_failures_per_minute: int = 30
    #: Requests (and, among them, streams) one API key may have in flight on this replica; more are 429 (0: no cap).
    max_concurrent_requests_per_key: int = 256
    max_concurrent_streams_per_key: int = 64
    #: Decide DLP in this process with policy's engine (local_policy.py), policy's documents held current by its
    #: watch (policy_state.py); false: every prompt and answer goes to policy's Inspect as before.
    policy_in_process: bool = True
    #: Policy's POLICY_HASH_KEY (the HMAC key of match hashes in PolicyDecided), so a decision made here hashes as
    #: policy's would. Empty: the public development key, with a warning; required outside development.
    policy_hash_key: str = field(default="", repr=False)
    #: An account's policy is re-read from policy at least this often, whatever the watch says (the bound for a
    #: change written on another policy replica).
    policy_max_age_seconds: float = 30.0

    #: The internal-plane secret (TOLLGATE_INTERNAL_SECRET); empty: internal calls unauthenticated, which
    #: only development allows (see tollgate_common.internal_auth).
    internal_keys: InternalKeys = field(default_factory=InternalKeys)
    #: TLS/SASL for every Kafka client (``<PREFIX>_KAFKA_SECURITY_PROTOCOL`` etc., see kafka_security.py).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: Named admin tokens with roles (``INGRESS_OPERATORS``; see operators.py): token SHA-256 hex → operator.
    operators: Mapping[str, Operator] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader("INGRESS", environ)
        try:
            operators = parse_operators(env.str("OPERATORS", ""))
        except ValueError as exc:
            env.problems.append(f"{env.name('OPERATORS')} {exc}")
            operators = {}
        settings = cls(
            operators=operators,
            internal_keys=internal_keys_from_env(env),
            kafka_security=kafka_security_from_env(env),
            admin_token=env.str("ADMIN_TOKEN", required=True),
            host=env.str("HOST", "127.0.0.1"),
            port=env.port("PORT", 8080),
            metrics_port=env.port("METRICS_PORT", 9464),
            billing_addr=env.str("BILLING_ADDR", "127.0.0.1:50053"),
            metering_addr=env.str("METERING_ADDR", "127.0.0.1:50054"),
            policy_addr=env.str("POLICY_ADDR", "127.0.0.1:50052"),
            router_addr=env.str("ROUTER_ADDR", "127.0.0.1:50051"),
            kafka_bootstrap_servers=env.str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            outbox_database_url=env.str("OUTBOX_DATABASE_URL", "sqlite:///var/ingress-outbox.db"),
            log_level=env.str("LOG_LEVEL", "INFO").upper(),
            kafka_send_timeout_seconds=env.float("KAFKA_SEND_TIMEOUT_SECONDS", 5.0, minimum=0.1),
            rpc_timeout_seconds=env.float("RPC_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            router_timeout_seconds=env.float("ROUTER_TIMEOUT_SECONDS", 300.0, minimum=1.0),
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", 30.0, minimum=0.0),
            max_body_bytes=env.int("MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024),
            auth_failures_per_minute=env.int("AUTH_FAILURES_PER_MINUTE", 30, minimum=0),
            max_concurrent_requests_per_key=env.int("MAX_CONCURRENT_REQUESTS_PER_KEY", 256, minimum=0),
            max_concurrent_streams_per_key=env.int("MAX_CONCURRENT_STREAMS_PER_KEY", 64, minimum=0),
            policy_in_process=env.bool("POLICY_IN_PROCESS", True),
            policy_hash_key=env.str("POLICY_HASH_KEY", ""),
            policy_max_age_seconds=env.float("POLICY_MAX_AGE_SECONDS", 30.0, minimum=0.0),
        )
        if settings.policy_in_process and not settings.policy_hash_key and not in_development(env.environ):
            # The development key is public: match hashes made with it identify a card number to anyone.
            env.problems.append(f"{env.name('POLICY_HASH_KEY')} (= policy's POLICY_HASH_KEY) is required outside "
                                "development while INGRESS_POLICY_IN_PROCESS is on")
        if settings.admin_token and len(settings.admin_token) < MIN_ADMIN_TOKEN_LENGTH and not in_development(
            env.environ
        ):
            env.problems.append(f"{env.name('ADMIN_TOKEN')} must be at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                                "outside development")
        if settings.log_level not in _LEVELS:
            env.problems.append(f"{env.name('LOG_LEVEL')}={settings.log_level!r} must be one of {', '.join(_LEVELS)}")
        env.check()
        return settings
