"""How a service connects to Kafka: TLS and SASL settings, read per service and validated at start.

Variables (``<PREFIX>`` is the service's, e.g. ``BILLING``)::

    <PREFIX>_KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    <PREFIX>_KAFKA_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512   (SASL_* only, required there)
    <PREFIX>_KAFKA_SASL_USERNAME       (SASL_* only, required there)
    <PREFIX>_KAFKA_SASL_PASSWORD       (SASL_* only, required there; never logged)
    <PREFIX>_KAFKA_SSL_CA_FILE         PEM bundle to verify the brokers (SSL / SASL_SSL; default: the system's)
    <PREFIX>_KAFKA_SSL_CERT_FILE       client certificate for mutual TLS (with _KEY_FILE)
    <PREFIX>_KAFKA_SSL_KEY_FILE        its private key

A combination that cannot work is a start-up error (exit 2), not a connection that fails later: SASL settings
without a SASL protocol, certificate files without TLS, a certificate without its key, a file that does not load,
and — outside development — ``SASL_PLAINTEXT`` with ``PLAIN``, which sends the password in clear. The TLS context
is built once here, so an unreadable or malformed file is reported at start.

What :meth:`KafkaSecurity.client_kwargs` returns is passed to every aiokafka client a service makes (producer,
consumer, admin). The embedded Tansu broker used in development and tests speaks neither TLS nor SASL, so the
test suite checks the validation and what reaches aiokafka (and a TLS handshake against a local TLS listener),
not a SASL login against a real broker.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from .config import EnvReader
from .internal_auth import in_development

__all__ = ["MECHANISMS", "PROTOCOLS", "KafkaSecurity", "kafka_security_from_env"]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """One service's Kafka connection security; the default is plaintext (development, the embedded broker)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / ``AIOKafkaAdminClient``."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password)
        return kwargs


def kafka_security_from_env(env: EnvReader) -> KafkaSecurity:
    """Read ``<PREFIX>_KAFKA_*`` security settings; every problem goes to ``env.problems`` (exit 2 at start)."""
    protocol = env.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", PROTOCOLS)
    mechanism = (env.raw("KAFKA_SASL_MECHANISM") or "").upper()
    username = env.raw("KAFKA_SASL_USERNAME") or ""
    password = env.raw("KAFKA_SASL_PASSWORD") or ""
    files = {name: env.raw(name) or "" for name in ("KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE")}
    security = KafkaSecurity(protocol, mechanism, username, password)
    problems = env.problems

    if security.uses_sasl:
        if mechanism not in MECHANISMS:
            problems.append(f"{env.name('KAFKA_SASL_MECHANISM')}={mechanism!r} must be one of {', '.join(MECHANISMS)}"
                            f" with {env.name('KAFKA_SECURITY_PROTOCOL')}={protocol}")
        for key, value in (("KAFKA_SASL_USERNAME", username), ("KAFKA_SASL_PASSWORD", password)):
            if not value:
                problems.append(f"{env.name(key)} is required with {env.name('KAFKA_SECURITY_PROTOCOL')}={protocol}")
        if protocol == "SASL_PLAINTEXT" and mechanism == "PLAIN" and not in_development(env.environ):
            problems.append(f"{env.name('KAFKA_SECURITY_PROTOCOL')}=SASL_PLAINTEXT with PLAIN sends the password in "
                            "clear; use SASL_SSL (or a SCRAM mechanism) outside development")
    else:
        for key, value in (("KAFKA_SASL_MECHANISM", mechanism), ("KAFKA_SASL_USERNAME", username),
                           ("KAFKA_SASL_PASSWORD", password)):
            if value:
                problems.append(f"{env.name(key)} is set but {env.name('KAFKA_SECURITY_PROTOCOL')}={protocol} "
                                "does not use SASL (SASL_PLAINTEXT or SASL_SSL)")

    if not security.uses_tls:
        for key, value in files.items():
            if value:
                problems.append(f"{env.name(key)} is set but {env.name('KAFKA_SECURITY_PROTOCOL')}={protocol} "
                                "does not use TLS (SSL or SASL_SSL)")
        return security
    cert, key = files["KAFKA_SSL_CERT_FILE"], files["KAFKA_SSL_KEY_FILE"]
    if bool(cert) != bool(key):
        problems.append(f"{env.name('KAFKA_SSL_CERT_FILE')} and {env.name('KAFKA_SSL_KEY_FILE')} go together")
        return security
    missing = [f"{env.name(k)}={v!r}" for k, v in files.items() if v and not Path(v).is_file()]
    if missing:
        problems.append(f"no such file: {', '.join(missing)}")
        return security
    try:
        context = create_ssl_context(cafile=files["KAFKA_SSL_CA_FILE"] or None, certfile=cert or None,
                                     keyfile=key or None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.append(f"Kafka TLS files do not load ({type(exc).__name__}: {getattr(exc, 'reason', '') or exc})")
        return security
    return KafkaSecurity(protocol, mechanism, username, password, context)
