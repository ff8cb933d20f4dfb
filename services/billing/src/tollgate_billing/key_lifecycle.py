"""An API key's life after its creation: settings changed, secret rotated with a grace period, revoked, expired.

Pure, like :mod:`~tollgate_billing.domain`: the application reads the key (:class:`KeyRecord`), this module decides
the event, the projections apply it. Every change carries the key's next ``revision``, which is both the event's
deterministic id (``api_key.updated:<key_id>:<revision>``: two changes in the same millisecond are still two
events) and the guard of the projection's UPDATE (``WHERE revision = n - 1``), so two administrators changing one
key at once cannot both win from the same starting point.

A revoked key is final: it answers 401 and is never changed again. Expiry and the end of a rotation grace are
instants, checked on every use (also from the in-process key cache), so they need no event when they pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tollgate.events.v1 import billing_pb2

from .errors import InvalidArgument, KeyRevoked

__all__ = [
    "MAX_GRACE_SECONDS",
    "MAX_LABEL",
    "KeyRecord",
    "KeyStatus",
    "api_key_revoked",
    "api_key_rotated",
    "api_key_updated",
    "check_expiry",
    "check_label",
    "clean_models",
]

MAX_LABEL = 200
MAX_MODELS = 256
MAX_MODEL_NAME = 200
#: A rotation's grace is for deploying the new secret, not a second permanent key.
MAX_GRACE_SECONDS = 30 * 86_400


class KeyStatus:
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key as administrators see it (no secret; the hashes only travel to the rotation decision)."""

    key_id: str
    account_id: str
    key_hash: str
    prefix: str
    label: str
    has_limit: bool
    limit_nanos: int
    usage_nanos: int
    allowed_models: tuple[str, ...]
    team: str
    project: str
    rate_limit_rpm: int
    account_admin: bool
    created_at_unix_ms: int
    expires_at_unix_ms: int | None
    revoked_at_unix_ms: int | None
    previous_key_hash: str | None
    previous_prefix: str | None
    previous_valid_until_unix_ms: int | None
    revision: int
    updated_at_unix_ms: int | None

    def status(self, now_unix_ms: int) -> str:
        if self.revoked_at_unix_ms is not None:
            return KeyStatus.REVOKED
        if self.expires_at_unix_ms is not None and self.expires_at_unix_ms <= now_unix_ms:
            return KeyStatus.EXPIRED
        return KeyStatus.ACTIVE

    def grace_until(self, now_unix_ms: int) -> int | None:
        """The end of the rotated-out secret's grace, while it lasts."""
        until = self.previous_valid_until_unix_ms
        return until if until is not None and until > now_unix_ms and self.revoked_at_unix_ms is None else None

    def _changeable(self) -> None:
        if self.revoked_at_unix_ms is not None:
            raise KeyRevoked(f"API key {self.key_id} is revoked; a revoked key cannot be changed")


def check_expiry(expires_at_unix_ms: int, now_unix_ms: int) -> int:
    """An expiry must lie ahead (0 = never): a key created or changed into the past is a mistake, not a wish."""
    if expires_at_unix_ms < 0:
        raise InvalidArgument("expires_at must not be negative")
    if expires_at_unix_ms and expires_at_unix_ms <= now_unix_ms:
        raise InvalidArgument("expires_at must be in the future")
    return expires_at_unix_ms


def clean_models(models: Iterable[str]) -> list[str]:
    """The allow-list as stored: sorted, without duplicates; bounded, so one key cannot carry an unbounded list."""
    cleaned = sorted({m for m in models if m})
    if len(cleaned) > MAX_MODELS:
        raise InvalidArgument(f"allowed_models may hold at most {MAX_MODELS} models")
    if any(len(m) > MAX_MODEL_NAME for m in cleaned):
        raise InvalidArgument(f"a model id in allowed_models is longer than {MAX_MODEL_NAME} characters")
    return cleaned


def check_label(label: str) -> str:
    if len(label) > MAX_LABEL:
        raise InvalidArgument(f"label must be at most {MAX_LABEL} characters")
    return label


def api_key_updated(
    key: KeyRecord,
    *,
    label: str | None,
    allowed_models: Iterable[str] | None,
    expires_at_unix_ms: int | None,
    at_unix_ms: int,
    team: str | None = None,
    project: str | None = None,
) -> billing_pb2.ApiKeyUpdated | None:
    """The key's settings after the change; None when nothing would change (no event for a no-op)."""
    key._changeable()
    new_label = key.label if label is None else check_label(label)
    new_models = list(key.allowed_models) if allowed_models is None else clean_models(allowed_models)
    current_expiry = key.expires_at_unix_ms or 0
    new_expiry = current_expiry if expires_at_unix_ms is None else check_expiry(expires_at_unix_ms, at_unix_ms)
    moves_team = team is not None and team != key.team
    moves_project = project is not None and project != key.project
    unchanged = (new_label, new_models, new_expiry) == (key.label, list(key.allowed_models), current_expiry)
    if unchanged and not moves_team and not moves_project:
        return None
    event = billing_pb2.ApiKeyUpdated(
        key_id=key.key_id,
        account_id=key.account_id,
        revision=key.revision + 1,
        label=new_label,
        allowed_models=new_models,
        expires_at_unix_ms=new_expiry,
        updated_at_unix_ms=at_unix_ms,
    )
    if moves_team:
        event.team = team
    if moves_project:
        event.project = project
    return event


def api_key_revoked(key: KeyRecord, at_unix_ms: int) -> billing_pb2.ApiKeyRevoked | None:
    """Revoke the key; None when it already is (revoking twice is not an error, and not a second event)."""
    if key.revoked_at_unix_ms is not None:
        return None
    return billing_pb2.ApiKeyRevoked(
        key_id=key.key_id, account_id=key.account_id, revision=key.revision + 1, revoked_at_unix_ms=at_unix_ms
    )


def api_key_rotated(
    key: KeyRecord, *, new_hash: str, new_prefix: str, grace_seconds: int, at_unix_ms: int
) -> billing_pb2.ApiKeyRotated:
    """A new secret for the key; the current one works for ``grace_seconds`` more (0 = it stops now).

    An expired key can be rotated (the expiry is a setting of the key, not of the secret, and stays as it is).
    """
    key._changeable()
    if grace_seconds < 0 or grace_seconds > MAX_GRACE_SECONDS:
        raise InvalidArgument(f"grace_seconds must be from 0 to {MAX_GRACE_SECONDS}")
    return billing_pb2.ApiKeyRotated(
        key_id=key.key_id,
        account_id=key.account_id,
        revision=key.revision + 1,
        key_hash=new_hash,
        prefix=new_prefix,
        previous_key_hash=key.key_hash,
        previous_prefix=key.prefix,
        previous_valid_until_unix_ms=at_unix_ms + grace_seconds * 1000 if grace_seconds else 0,
        rotated_at_unix_ms=at_unix_ms,
    )
