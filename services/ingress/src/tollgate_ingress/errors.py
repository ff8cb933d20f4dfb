"""The one exception hierarchy of ingress, and its one mapping from gRPC status codes.

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

gRPC errors are translated once, in :func:`from_grpc`; the ``tollgate-reason`` trailer becomes the ``code``.
"""

from __future__ import annotations

from typing import ClassVar

import grpc
import orjson
from tollgate_common.grpc import error_reason, retry_after

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
    "from_grpc",
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


_BY_CODE: dict[grpc.StatusCode, type[IngressError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationFailed,
    grpc.StatusCode.FAILED_PRECONDITION: InsufficientQuota,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.DEADLINE_EXCEEDED: UpstreamTimeout,
}


#: FAILED_PRECONDITION reasons that are about the resource's state, not about money (409, not 402).
_CONFLICTS = frozenset({"key_revoked", "group_archived"})


def from_grpc(error: grpc.aio.AioRpcError, *, service: str) -> IngressError:
    """Translate a failed call to ``service`` ("billing", "policy" or "router") into the client's error.

    A broken router means the model provider failed (502); a broken billing or policy means Tollgate itself is
    degraded (503), which clients should retry elsewhere or later.
    """
    code = error.code()
    reason = error_reason(error) or None
    message = error.details() or f"{service} failed ({code.name})"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(message, code=reason, retry_after_seconds=retry_after(error))
    if service == "router" and code == grpc.StatusCode.FAILED_PRECONDITION:
        # No deployment left after policy limits and the caller's `provider`/`models` overrides: the request
        # can't be served as asked (OpenRouter answers such a request with a 4xx too), not a balance problem.
        return InvalidRequest(message, code=reason or "no_eligible_deployment")
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason in _CONFLICTS:
        return Conflict(message, code=reason)
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, code=reason)
    if service == "router":
        return UpstreamFailed(message, code=reason)
    return ServiceUnavailable(f"{service} is unavailable: {message}", code=reason)
