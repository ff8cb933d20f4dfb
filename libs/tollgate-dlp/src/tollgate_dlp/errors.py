"""Policy's one exception hierarchy: each class carries a stable ``reason``. Pure: no transport here.

Every error a caller can see is a :class:`PolicyError`; ``grpc_server.STATUSES`` maps each class to its gRPC status
once (shown beside it below), sent with trailing metadata ``tollgate-reason`` (:func:`tollgate_common.grpc.rpc`)::

    PolicyError                       INTERNAL             internal
    ├── InvalidArgument               INVALID_ARGUMENT     invalid_argument
    │   ├── UnknownDetector           INVALID_ARGUMENT     unknown_detector
    │   ├── InvalidRule               INVALID_ARGUMENT     invalid_rule   (no action, or a detector named twice)
    │   ├── InputTooLarge             INVALID_ARGUMENT     input_too_large  (Inspect: too many texts or characters)
    │   └── LimitExceeded             INVALID_ARGUMENT     limit_exceeded  (a policy document past a cap, limits.py)
    ├── ScanCapacityExhausted         RESOURCE_EXHAUSTED   scan_capacity_exhausted  (retry-after; per account)
    ├── NoShadowPolicy                NOT_FOUND            no_shadow_policy  (promote/discard without a shadow)
    ├── ConcurrentUpdate              ABORTED              concurrent_update  (retryable)
    └── StorageUnavailable            UNAVAILABLE          storage_unavailable  (retryable)

A BLOCK verdict is not an error: Inspect answers OK with ``VERDICT_BLOCK`` and ingress turns that into 403
``policy_violation``. Messages name detectors and accounts, never the inspected text.
"""

from __future__ import annotations

__all__ = [
    "ConcurrentUpdate",
    "InputTooLarge",
    "InvalidArgument",
    "InvalidRule",
    "LimitExceeded",
    "NoShadowPolicy",
    "PolicyError",
    "ScanCapacityExhausted",
    "StorageUnavailable",
    "UnknownDetector",
]


class PolicyError(Exception):
    """Base of every error policy reports to a caller. ``reason`` (and the status the transport maps the
    class to) is the wire contract."""

    reason: str = "internal"


class InvalidArgument(PolicyError):
    reason = "invalid_argument"


class UnknownDetector(InvalidArgument):
    """A rule names a detector this service does not have (a typo would otherwise silently do nothing)."""

    reason = "unknown_detector"


class InvalidRule(InvalidArgument):
    """A rule without an action (ACTION_UNSPECIFIED), or two rules for the same detector."""

    reason = "invalid_rule"


class InputTooLarge(InvalidArgument):
    """An Inspect with more texts or characters than ``Limits`` allows (checked before any scanning)."""

    reason = "input_too_large"


class LimitExceeded(InvalidArgument):
    """A policy document past one of the caps in :mod:`tollgate_dlp.limits` (custom detectors, scopes, ...)."""

    reason = "limit_exceeded"


class ScanCapacityExhausted(PolicyError):
    """The account already has as many large scans running and waiting as it may; retry shortly."""

    reason = "scan_capacity_exhausted"
    retry_after = 1


class NoShadowPolicy(PolicyError):
    """Promote or discard asked for while the account has no pending shadow version."""

    reason = "no_shadow_policy"


class ConcurrentUpdate(PolicyError):
    """Another SetPolicy for the same account won the race for the next version too many times in a row."""

    reason = "concurrent_update"


class StorageUnavailable(PolicyError):
    """The policy database did not answer; callers may retry."""

    reason = "storage_unavailable"
