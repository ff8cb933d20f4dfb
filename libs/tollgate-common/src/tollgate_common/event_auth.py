"""Who produced an event: a signature on every Kafka record, checked by each consumer before anything is applied.

Without it, anyone who can reach the broker could produce a ``UsageRated`` that charges or frees any account. So
every record a service produces carries the header ``tollgate-signature``::

    v1=<hex keyed BLAKE2b-256(key(producer), fields + value)>

where ``producer`` is the service named in ``ce_source`` (``//tollgate/<service>``), ``key(producer)`` is
``derive_key(TOLLGATE_INTERNAL_SECRET, "kafka/<producer>")`` and ``fields`` are ``ce_source``, ``ce_id``,
``ce_type`` and ``ce_subject``, each length-prefixed (so no two field lists sign the same bytes); the value (the
protobuf payload) is fed to the same MAC, which is the digest of it. Keyed BLAKE2b is a MAC by design (RFC 7693)
and costs half of an HMAC-SHA256 here (one C object instead of HMAC's two hashes and Python wrapper). A consumer
accepts a record only when

1. its ``ce_type`` may be produced by the service its ``ce_source`` names (:data:`PRODUCERS`: only metering
   emits ``UsageRated``, only ingress ``UsageRecorded``, …; :data:`CO_PRODUCERS` names the few types a second
   service may produce too: ingress records ``PolicyDecided`` when it decides DLP in process), and
2. the signature verifies under that producer's key (current secret, or ``TOLLGATE_INTERNAL_SECRET_PREVIOUS``
   while rotating).

Anything else is handed back as a reason, and ``DbOffsetConsumer`` parks the record (``parked_events``) instead of
applying it. Replaying a genuine record changes nothing: consumers dedupe on (source, id), both signed.

Signing happens in the producer (:class:`SigningProducer`, made by ``make_producer(…, signer=…)``), at send time,
so an outbox row published after a rotation is signed with the new secret. Without a secret (development only, as
for the gRPC caller tokens) nothing is signed or checked.

Cost: keys are derived once per process and each MAC starts from a copy of a keyed state, so a sign or a verify
is a few microseconds of CPU for a usage event (``python -m bench.internal_auth`` prints the figures).

Limit (as for gRPC): the secret is shared, so a service holding it could sign as another; it keeps out everyone
who does not hold it (a tenant's workload, the rest of the network reaching the broker).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from .events import EVENT_TYPES, Envelope
from .internal_auth import InternalKeys, derive_key

__all__ = [
    "CO_PRODUCERS",
    "PRODUCERS",
    "SIGNATURE_HEADER",
    "EventSigner",
    "EventVerifier",
    "SigningProducer",
    "producer_of",
    "wrong_producer",
]

SIGNATURE_HEADER = "tollgate-signature"
_VERSION = b"v1="
_SOURCE_PREFIX = "//tollgate/"

#: ce_type (or a prefix ending in ".") → the one service allowed to produce it.
PRODUCERS: dict[str, str] = {
    "tollgate.usage.v1.usage.recorded": "ingress",
    "tollgate.usage.v1.usage.rated": "metering",
    "tollgate.usage.v1.usage.reconciled": "metering",
    "tollgate.billing.v1.": "billing",
    "tollgate.policy.v1.": "policy",
    "tollgate.attempts.v1.": "router",
}
#: ce_type → services allowed to produce it besides its owner in :data:`PRODUCERS`: ingress decides DLP in process
#: with policy's engine and records the same ``PolicyDecided`` policy would (services/ingress/README.md).
CO_PRODUCERS: dict[str, frozenset[str]] = {
    "tollgate.policy.v1.policy.decided": frozenset({"ingress"}),
}


def producer_of(ce_type: str) -> str | None:
    """The service allowed to produce ``ce_type``; None for a type no service may produce."""
    exact = PRODUCERS.get(ce_type)
    if exact is not None:
        return exact
    for prefix, service in PRODUCERS.items():
        if prefix.endswith(".") and ce_type.startswith(prefix):
            return service
    return None


#: Every known event type resolved once (the hot path is one dict lookup).
_PRODUCER_OF_TYPE: dict[str, str] = {t: p for t in EVENT_TYPES if (p := producer_of(t)) is not None}


def wrong_producer(ce_type: str, source: str) -> str | None:
    """Why ``source`` may not produce ``ce_type`` (None when it may): the part of the check that needs no secret,
    so readers of stores that keep no signature (an audit export, its offline verification) apply it too."""
    producer = _PRODUCER_OF_TYPE.get(ce_type) or producer_of(ce_type)
    if producer is None:
        return "no service may produce this event type"
    if source != _SOURCE_PREFIX + producer:
        also = CO_PRODUCERS.get(ce_type)
        if also is not None and source.removeprefix(_SOURCE_PREFIX) in also and source.startswith(_SOURCE_PREFIX):
            return None
        return f"event type may only be produced by {producer}, not by source {source[:80]!r}"
    return None


_FIELDS = b"tollgate-event/v1\n%d:%b\n%d:%b\n%d:%b\n%d:%b\n"


def _signed_bytes(source: bytes, event_id: bytes, ce_type: bytes, subject: bytes) -> bytes:
    return _FIELDS % (len(source), source, len(event_id), event_id, len(ce_type), ce_type, len(subject), subject)


def _keyed(secret: str, service: str) -> Any:
    """A MAC state already keyed for ``service``: ``.copy()`` of it skips the key setup on every record."""
    return hashlib.blake2b(key=derive_key(secret, f"kafka/{service}"), digest_size=32)


class EventSigner:
    """Signs the records one service produces, with that service's key."""

    def __init__(self, service: str, keys: InternalKeys) -> None:
        self.service = service
        self.enabled = keys.enabled
        self._base = _keyed(keys.secret, service) if keys.enabled else None

    def signature(self, headers: Sequence[tuple[str, bytes]], value: bytes | None) -> bytes:
        """The ``tollgate-signature`` value for a record with these CloudEvents headers and value."""
        assert self._base is not None, "signing needs TOLLGATE_INTERNAL_SECRET"
        h = dict(headers)
        mac = self._base.copy()
        mac.update(_signed_bytes(h.get("ce_source", b""), h.get("ce_id", b""), h.get("ce_type", b""),
                                 h.get("ce_subject", b"")))
        if value:
            mac.update(value)
        return _VERSION + mac.hexdigest().encode()

    def sign(self, headers: Sequence[tuple[str, bytes]] | None, value: bytes | None) -> list[tuple[str, bytes]]:
        """``headers`` with the signature added (any signature already there is replaced)."""
        kept = [(k, v) for k, v in headers or () if k != SIGNATURE_HEADER]
        if not self.enabled:
            return kept
        kept.append((SIGNATURE_HEADER, self.signature(kept, value)))
        return kept


class EventVerifier:
    """A consumer's check: the type comes from its one allowed producer, and that producer signed the record."""

    def __init__(self, keys: InternalKeys) -> None:
        self.enabled = keys.enabled
        secrets = [s for s in (keys.secret, keys.previous) if s]
        services = sorted(set(PRODUCERS.values()))
        #: "//tollgate/<service>" → keyed HMACs (current secret first).
        self._bases: dict[str, list[Any]] = {
            _SOURCE_PREFIX + service: [_keyed(secret, service) for secret in secrets] for service in services
        }

    def __call__(self, env: Envelope, headers: Sequence[tuple[str, bytes]]) -> str | None:
        """None when ``env`` may be applied; else why not (a reason to park it with; never payload data)."""
        if not self.enabled:
            return None
        wrong = wrong_producer(env.type, env.source)
        if wrong is not None:
            return wrong
        signature = None
        for key, value in headers:
            if key == SIGNATURE_HEADER:
                signature = value
                break
        if signature is None:
            return f"unsigned event (no {SIGNATURE_HEADER} header)"
        signed = _signed_bytes(env.source.encode(), env.id.encode(), env.type.encode(), env.subject.encode())
        for base in self._bases[env.source]:
            mac = base.copy()
            mac.update(signed)
            if env.data:
                mac.update(env.data)
            if hmac.compare_digest(signature, _VERSION + mac.hexdigest().encode()):
                return None
        return f"signature does not verify as {env.source.removeprefix(_SOURCE_PREFIX)}'s"


class SigningProducer(AIOKafkaProducer):  # type: ignore[misc]
    """An aiokafka producer that signs every record it sends (``send`` and ``send_and_wait``, which calls it)."""

    def __init__(self, signer: EventSigner, **config: Any) -> None:
        super().__init__(**config)
        self.signer = signer

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Sequence[tuple[str, bytes]] | None = None) -> Any:
        return await super().send(topic, value, key, partition, timestamp_ms, self.signer.sign(headers, value))

    def create_batch(self) -> Any:
        raise NotImplementedError("SigningProducer signs in send(); batches built by hand would go out unsigned")
