"""The event envelope: CloudEvents 1.0 in Kafka binary mode, protobuf payloads.

Headers ``ce_specversion``, ``ce_id``, ``ce_source`` (``//tollgate/<service>``), ``ce_type``
(``tollgate.<subsystem>.v1.<entity>.<past-tense-verb>``), ``ce_subject`` (account id), ``ce_time``, ``traceparent``;
value = protobuf bytes of the message that ``ce_type`` names; key = account id (per-account order).
Consumers dedupe on (source, id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message
from tollgate.events.v1 import attempts_pb2, billing_pb2, policy_pb2, usage_pb2

from .telemetry import current_traceparent

__all__ = [
    "EVENT_TYPES",
    "Envelope",
    "Topics",
    "decode",
    "envelope_for",
]


class Topics:
    USAGE = "tollgate.usage.v1"
    USAGE_RATED = "tollgate.usage.rated.v1"
    BILLING = "tollgate.billing.v1"
    POLICY = "tollgate.policy.v1"
    ATTEMPTS = "tollgate.attempts.v1"
    ALL = (USAGE, USAGE_RATED, BILLING, POLICY, ATTEMPTS)


#: ce_type → protobuf message class. Old types stay here forever: a breaking change adds a new type.
EVENT_TYPES: dict[str, type[Message]] = {
    "tollgate.usage.v1.usage.recorded": usage_pb2.UsageRecorded,
    "tollgate.usage.v1.usage.rated": usage_pb2.UsageRated,
    "tollgate.billing.v1.account.created": billing_pb2.AccountCreated,
    "tollgate.billing.v1.api_key.created": billing_pb2.ApiKeyCreated,
    "tollgate.billing.v1.api_key.updated": billing_pb2.ApiKeyUpdated,
    "tollgate.billing.v1.api_key.revoked": billing_pb2.ApiKeyRevoked,
    "tollgate.billing.v1.api_key.rotated": billing_pb2.ApiKeyRotated,
    "tollgate.billing.v1.group.created": billing_pb2.GroupCreated,
    "tollgate.billing.v1.group.updated": billing_pb2.GroupUpdated,
    "tollgate.billing.v1.budget.created": billing_pb2.BudgetCreated,
    "tollgate.billing.v1.budget.updated": billing_pb2.BudgetUpdated,
    "tollgate.billing.v1.budget.deleted": billing_pb2.BudgetDeleted,
    "tollgate.billing.v1.budget.threshold_crossed": billing_pb2.BudgetThresholdCrossed,
    "tollgate.billing.v1.balance_alert.set": billing_pb2.BalanceAlertSet,
    "tollgate.billing.v1.balance.low": billing_pb2.BalanceLow,
    "tollgate.billing.v1.balance.restored": billing_pb2.BalanceRestored,
    "tollgate.billing.v1.credits.added": billing_pb2.CreditsAdded,
    "tollgate.billing.v1.hold.placed": billing_pb2.HoldPlaced,
    "tollgate.billing.v1.hold.captured": billing_pb2.HoldCaptured,
    "tollgate.billing.v1.hold.expired": billing_pb2.HoldExpired,
    "tollgate.billing.v1.hold.reconciled": billing_pb2.HoldReconciled,
    "tollgate.billing.v1.promo_credit.expired": billing_pb2.PromoCreditExpired,
    "tollgate.billing.v1.charge.refunded": billing_pb2.ChargeRefunded,
    "tollgate.billing.v1.credit_note.issued": billing_pb2.CreditNoteIssued,
    "tollgate.billing.v1.statement.closed": billing_pb2.StatementClosed,
    "tollgate.billing.v1.webhook.set": billing_pb2.WebhookSet,
    "tollgate.billing.v1.webhook.secret_rotated": billing_pb2.WebhookSecretRotated,
    "tollgate.billing.v1.webhook.deleted": billing_pb2.WebhookDeleted,
    "tollgate.policy.v1.policy.decided": policy_pb2.PolicyDecided,
    "tollgate.attempts.v1.attempt.recorded": attempts_pb2.AttemptRecorded,
    # Metering's usage event for a request whose UsageRecorded never came, built from the router's attempts
    # (tollgate_metering.reconciler). Listed after usage.recorded: a UsageRecorded is wrapped as that.
    "tollgate.usage.v1.usage.reconciled": usage_pb2.UsageRecorded,
}
#: The first type listed for a class (usage.recorded, not usage.reconciled, for a UsageRecorded).
_TYPE_OF: dict[type[Message], str] = {}
for _name, _cls in EVENT_TYPES.items():
    _TYPE_OF.setdefault(_cls, _name)


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    source: str
    type: str
    subject: str
    time: str
    data: bytes
    traceparent: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_subject", self.subject.encode()),
            ("ce_time", self.time.encode()),
            ("content-type", b"application/protobuf"),
        ]
        if self.traceparent:
            headers.append(("traceparent", self.traceparent.encode()))
        return headers

    @classmethod
    def from_kafka(cls, headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...], value: bytes) -> Envelope:
        h = {k: v.decode() for k, v in headers}
        missing = [k for k in ("ce_id", "ce_source", "ce_type") if not h.get(k)]
        if missing:
            raise ValueError(f"not a CloudEvent: missing header(s) {', '.join(missing)}")
        return cls(
            id=h["ce_id"],
            source=h["ce_source"],
            type=h["ce_type"],
            subject=h.get("ce_subject", ""),
            time=h.get("ce_time", ""),
            data=value,
            traceparent=h.get("traceparent", ""),
        )

    def message(self) -> Message:
        return decode(self.type, self.data)


def decode(ce_type: str, data: bytes) -> Message:
    cls = EVENT_TYPES.get(ce_type)
    if cls is None:
        raise ValueError(f"unknown event type {ce_type!r}")
    msg = cls()
    msg.ParseFromString(data)
    return msg


def envelope_for(message: Message, *, id: str, service: str, subject: str, at_unix_ms: int | None = None) -> Envelope:
    """Wrap a protobuf event; its ce_type comes from :data:`EVENT_TYPES`, its trace from the current span."""
    ce_type = _TYPE_OF.get(type(message))
    if ce_type is None:
        raise ValueError(f"{type(message).__name__} has no registered event type")
    ms = at_unix_ms if at_unix_ms is not None else int(time.time() * 1000)
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Envelope(
        id=id,
        source=f"//tollgate/{service}",
        type=ce_type,
        subject=subject,
        time=stamp,
        data=message.SerializeToString(),
        traceparent=current_traceparent(),
    )
