"""The one exception hierarchy of ingress.

Every error a client sees is an :class:`IngressError` rendered as OpenAI's error body
``{"error": {"message", "type", "code", "param"}}`` with the HTTP status from docs/architecture.md::

    IngressError                      status  type
    ├── InvalidRequest                400     invalid_request_error
    ├── AuthenticationFailed          401     authentication_error
    ├── InsufficientQuota             402     insufficient_quota
    ├── PermissionDenied              403     permission_error
    ├── NotFound                      404     invalid_request_error
    ├── Conflict                      409     invalid_request_error
    ├── PayloadTooLarge               413     invalid_request_error
    ├── RateLimited                   429     rate_limit_error (+ Retry-After)
    ├── InternalError                 500     api_error
    ├── UpstreamFailed                502     upstream_error
    ├── ServiceUnavailable            503     api_error (billing or policy unreachable)
    └── UpstreamTimeout               504     timeout_error

Pure: a failed gRPC call is translated into one of these once, in :func:`tollgate_ingress.channels.from_grpc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import orjson

__all__ = [
    "AuthenticationFailed",
    "Conflict",
    "IngressError",
    "InsufficientQuota",
    "InternalError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServiceUnavailable",
    "UpstreamFailed",
    "UpstreamTimeout",
    "policy_violation",
]


class IngressError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        #: A failed router call that a provider may have served (and will bill) without its usage being known: the
        #: router's ``tollgate-usage-unknown`` trailer, or ingress's own deadline cutting the call.
        self.usage_unknown = False

    def headers(self) -> dict[str, str]:
        return {}

    def payload(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


class InvalidRequest(IngressError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationFailed(IngressError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class InsufficientQuota(IngressError):
    status = 402
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class PermissionDenied(IngressError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class NotFound(IngressError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class Conflict(IngressError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(IngressError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(IngressError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, code: str | None = None, retry_after_seconds: int | None = None) -> None:
        super().__init__(message, code=code)
        # Clients (the openai SDK among them) back off by this header; a 429 without it invites a hot loop.
        self.retry_after_seconds = retry_after_seconds if retry_after_seconds is not None else 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class InternalError(IngressError):
    pass


class UpstreamFailed(IngressError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class ServiceUnavailable(IngressError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"


class UpstreamTimeout(IngressError):
    status = 504
    type = "timeout_error"
    default_code = "timeout"


def policy_violation(what: str, kinds: Sequence[str]) -> PermissionDenied:
    """403 policy_violation for a blocked ``what`` ("request" or "response") naming the finding types — never the
    matched data, which must not be echoed or logged."""
    subject = "The request" if what == "request" else "The model's response"
    return PermissionDenied(
        f"{subject} was blocked by the account's data policy: it contains "
        + (", ".join(kinds) if kinds else "data the policy forbids"),
        code="policy_violation",
    )
