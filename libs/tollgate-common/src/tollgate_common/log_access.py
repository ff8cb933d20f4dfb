"""How a reader of the log that is not a live consumer (a service's ``rebuild``, the ``tollgate`` ops command)
reaches Kafka and checks who produced each record: with the live consumers' own settings and check.

Without this a rebuild would connect in plaintext where the services use TLS/SASL, and apply a forged event that the
live consumers parked (then report it as a live-vs-rebuilt difference, or export it as genuine). So every reader
takes the same two things the consumers take:

- the Kafka TLS/SASL settings (:mod:`tollgate_common.kafka_security`), read under the reader's prefix:
  ``BILLING_KAFKA_*`` for billing's rebuild, ``METERING_KAFKA_*`` for metering's, ``TOLLGATE_KAFKA_*`` for the
  ``tollgate`` command;
- the internal secret (``TOLLGATE_INTERNAL_SECRET``, ``_PREVIOUS`` while rotating), from which
  :class:`~tollgate_common.event_auth.EventVerifier` checks each record's ``tollgate-signature``. As for the
  services it is required outside development (``TOLLGATE_ENV``); in development, without it, nothing is checked
  (the services then sign nothing either) and the reports say so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import EnvReader
from .event_auth import EventVerifier
from .internal_auth import InternalKeys, internal_keys_from_env
from .kafka_security import KafkaSecurity, kafka_security_from_env

__all__ = ["LogAccess", "log_access_from_env"]


@dataclass(frozen=True)
class LogAccess:
    """The Kafka security settings and the producer check of one reader of the log."""

    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    keys: InternalKeys = field(default_factory=InternalKeys)

    @property
    def verifies(self) -> bool:
        """Whether producer signatures are checked (False only in development without a secret)."""
        return self.keys.enabled

    def verifier(self) -> EventVerifier | None:
        """The live consumers' check, or None when there is no secret to check with."""
        return EventVerifier(self.keys) if self.keys.enabled else None


def log_access_from_env(prefix: str, environ: Mapping[str, str] | None = None) -> LogAccess:
    """``<PREFIX>_KAFKA_*`` and the internal secret; raises ``ConfigError`` listing every problem (exit 2)."""
    env = EnvReader(prefix, os.environ if environ is None else environ)
    access = LogAccess(kafka_security_from_env(env), internal_keys_from_env(env))
    env.check()
    return access
