"""Metering settings from ``METERING_*`` variables, validated at start (``load_or_exit`` → exit 2).

The price book file is read and validated here too: a bad book is a configuration error the operator must see
before the service takes any traffic, not a surprise on the first usage event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tollgate_common.config import EnvReader
from tollgate_common.internal_auth import InternalKeys, internal_keys_from_env
from tollgate_common.kafka_security import KafkaSecurity, kafka_security_from_env

from .domain import DEMO_PRICE_BOOK, PriceBook, parse_price_book
from .errors import InvalidPriceBook

__all__ = ["DEFAULT_SCHEMA", "Settings", "load_price_book_file"]

#: On PostgreSQL metering's tables live in this schema (one schema per service).
DEFAULT_SCHEMA = "metering"


def load_price_book_file(path: Path) -> PriceBook:
    """Read and validate a YAML price book; every problem ends up in one :class:`InvalidPriceBook`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidPriceBook([f"cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidPriceBook([f"{path} is not valid YAML: {exc}"]) from None
    try:
        return parse_price_book(data)
    except InvalidPriceBook as exc:
        raise InvalidPriceBook([f"{path}: {p}" for p in exc.problems]) from None


@dataclass(frozen=True)
class Settings:
    grpc_host: str
    grpc_port: int
    database_url: str
    database_schema: str
    kafka_bootstrap_servers: str
    price_book_file: Path | None
    price_book: PriceBook
    metrics_port: int
    log_level: str

    #: The internal-plane secret (TOLLGATE_INTERNAL_SECRET); empty: internal calls unauthenticated, which
    #: only development allows (see tollgate_common.internal_auth).
    internal_keys: InternalKeys = field(default_factory=InternalKeys)
    #: TLS/SASL for every Kafka client (``<PREFIX>_KAFKA_SECURITY_PROTOCOL`` etc., see kafka_security.py).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: A request whose last router attempt is this old with no usage event is rated from its attempts
    #: (reconciler.py); 0 turns that off. Below billing's hold TTL (600 s), so such a hold is captured at the
    #: provider's usage rather than expired in full.
    reconcile_after_seconds: float = 120.0
    #: How often the attempts are checked for requests to reconcile.
    reconcile_sweep_seconds: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = EnvReader("METERING", environ)
        book_path = env.raw("PRICE_BOOK_FILE")
        book = DEMO_PRICE_BOOK
        if book_path is not None:
            try:
                book = load_price_book_file(Path(book_path))
            except InvalidPriceBook as exc:
                env.problems.extend(f"{env.name('PRICE_BOOK_FILE')}: {p}" for p in exc.problems)
        database_url = env.str("DATABASE_URL", "sqlite:///var/metering.db")
        if not database_url.startswith(("sqlite", "postgresql", "postgres")):
            env.problems.append(f"{env.name('DATABASE_URL')}={database_url!r} must be sqlite:///… or postgresql://…")
        log_level = (env.raw("LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            env.problems.append(f"{env.name('LOG_LEVEL')}={log_level!r} must be one of DEBUG, INFO, WARNING, ERROR")
        settings = cls(
            internal_keys=internal_keys_from_env(env),
            kafka_security=kafka_security_from_env(env),
            # Listens on every interface by default: in a pod the probes and peers come from outside localhost.
            grpc_host=env.str("GRPC_HOST", "0.0.0.0"),
            grpc_port=env.port("GRPC_PORT", 50054),
            database_url=database_url,
            database_schema=env.str("DATABASE_SCHEMA", DEFAULT_SCHEMA),
            kafka_bootstrap_servers=env.str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            price_book_file=Path(book_path) if book_path else None,
            price_book=book,
            metrics_port=env.port("METRICS_PORT", 0),
            reconcile_after_seconds=env.float("RECONCILE_AFTER_SECONDS", 120.0, minimum=0.0),
            reconcile_sweep_seconds=env.float("RECONCILE_SWEEP_SECONDS", 5.0, minimum=0.05),
            log_level=log_level,
        )
        env.check()
        return settings
